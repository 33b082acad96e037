# fish completion for ray-ha: packagers install this file as
# /usr/share/fish/vendor_completions.d/ray-ha.fish. fish sources it the first time it completes
# ray-ha.
#
# click's completion protocol changes between click releases, so nothing generated is kept here: this
# asks the installed ray-ha for the script of the click it runs on and sources it, which defines
# ray-ha's completions (complete --command ray-ha).
# Without ray-ha on PATH it quietly defines none.
if command -q ray-ha
    ray-ha completion fish 2>/dev/null | source
end
