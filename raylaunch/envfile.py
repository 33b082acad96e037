"""Settings from a `.env` file: loaded into the environment (never over what is set), and only from a
file that nobody but its reader or root could have written, since it can set the hooks ray-ha runs."""

from __future__ import annotations

import os
from typing import Optional

from raylaunch.config import ConfigError


def load_env_file(path: Optional[str]) -> None:
    """Load `path` (or ./.env if present) into os.environ without overriding what is already set. The
    file must be the caller's or root's and writable by nobody else: it can set hooks that ray-ha runs."""
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"env file not found: {path}")
    candidate = path or os.path.join(os.getcwd(), ".env")
    if os.path.isfile(candidate):
        import io

        import dotenv  # here, not at the top: the light entry point imports this module

        dotenv.load_dotenv(stream=io.StringIO(_trusted_text(candidate)), override=False)


def _trusted_text(path: str) -> str:
    """The text of env file `path`, checked on the file actually opened (ConfigError if another user could
    have written it)."""
    with open(path, encoding="utf-8") as file:
        st = os.fstat(file.fileno())
        problem = (f"is owned by uid {st.st_uid}, not by you or root" if st.st_uid not in (os.geteuid(), 0) else
                   f"is writable by group or others (mode {st.st_mode & 0o7777:04o})" if st.st_mode & 0o022 else None)
        if problem:
            raise ConfigError(f"env file {path} {problem}: another user could set ray-ha's hooks through it; "
                              "make it yours and not writable by others (mode 0600), or remove it")
        return file.read()
