"""The one typed configuration schema: a TOML file plus ``GATEWAYD_`` environment variables.

Every section is a pydantic model; ``Field(description=...)`` is the help text and the source of the
commented example in ``config/gatewayd.toml`` (see ``gatewayd.configdoc``). Environment variables nest
with ``__``: ``GATEWAYD_SMTP__UPSTREAM__PORT=2525``.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_CONFIG_PATHS = (Path("/etc/gatewayd/gatewayd.toml"), Path("config/gatewayd.toml"))

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Accept seconds as a number or a string such as ``"5d"``, ``"30s"``, ``"250ms"``."""
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 2h, 5d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_hostport(value: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Split ``"host:port"`` / ``"[v6]:port"`` / ``":port"``; port 0 asks the kernel for a free one."""
    text = value.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not host:port: {value!r}")
    return host or default_host, int(port)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_listeners(values: list[str]) -> list[str]:
    for value in values:
        parse_hostport(value)
    return values


class UpstreamSMTP(Section):
    host: str = Field("127.0.0.1", description="Upstream SMTP server that accepted mail is relayed to.")
    port: int = Field(25, ge=1, le=65535, description="Upstream SMTP port.")
    tls: Literal["none", "starttls", "tls"] = Field(
        "none", description="none | starttls | tls (implicit TLS, usually port 465)."
    )
    ca_file: str = Field(
        "", description="CA bundle to verify the upstream certificate; empty = system store."
    )
    verify: bool = Field(True, description="Verify the upstream TLS certificate and host name.")
    timeout: float = Field(60.0, gt=0, description="Seconds to wait for each upstream SMTP reply.")
    max_connections: int = Field(
        8, ge=1, le=256, description="Upstream connections kept open and used in parallel for delivery."
    )
    helo_name: str = Field("", description="Name sent in EHLO upstream; empty = this host's FQDN.")
    auth_host: str = Field("", description="Server that checks submission logins (AUTH); empty = host.")
    auth_port: int = Field(0, ge=0, le=65535, description="Port for AUTH checks (often 587); 0 = port.")
    auth_tls: Literal["", "none", "starttls", "tls"] = Field(
        "", description="TLS for AUTH checks; empty = tls."
    )


class SMTPSection(Section):
    listen: list[str] = Field(
        default_factory=lambda: ["127.0.0.1:2525"],
        description="Relay listener(s) host:port for trusted clients / the MX; no AUTH is offered.",
    )
    submission_listen: list[str] = Field(
        default_factory=list,
        description="Submission listener(s) host:port that require AUTH (checked against upstream AUTH).",
    )
    allow_plaintext_auth: bool = Field(
        False, description="Allow AUTH before STARTTLS on submission listeners (only for tests or loopback)."
    )
    max_message_size: int = Field(26214400, ge=1024, description="Largest message accepted, in bytes (SIZE).")
    max_recipients: int = Field(1000, ge=1, description="Most RCPT TO per transaction.")
    hostname: str = Field(
        "", description="Name in our greeting and Received header; empty = this host's FQDN."
    )
    auth_cache_ttl: float = Field(
        300.0, ge=0, description="Seconds a verified login is remembered in memory (never on disk); 0 = off."
    )
    auth_failure_delay: float = Field(
        1.0, ge=0, description="Seconds added per recent failed AUTH from the same address (throttling)."
    )
    auth_max_failures: int = Field(
        10, ge=1, description="Failed AUTH attempts per client address per 10 minutes before 421 and close."
    )
    session_timeout: float = Field(300.0, gt=0, description="Seconds of client silence before we hang up.")
    upstream: UpstreamSMTP = Field(default_factory=UpstreamSMTP)  # type: ignore[arg-type]

    _v = field_validator("listen", "submission_listen")(_check_listeners)


class SpoolSection(Section):
    path: str = Field("/var/lib/gatewayd/spool", description="Directory of the durable spool.")
    max_age: float = Field(5 * 86400.0, description="How long delivery is retried before a bounce (e.g. 5d).")
    retry_min: float = Field(60.0, description="First retry delay; doubles each attempt (e.g. 1m).")
    retry_max: float = Field(3600.0, description="Longest retry delay (e.g. 1h).")
    segment_size: int = Field(64 * 1024 * 1024, ge=1024 * 1024, description="Bytes per spool log segment.")
    commit_delay: float = Field(
        0.0, ge=0, description="Seconds to wait to gather more messages into one fsync (0 = as they come)."
    )

    @field_validator("max_age", "retry_min", "retry_max", "commit_delay", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class HTTPSection(Section):
    listen: str = Field(
        "127.0.0.1:8025", description="HTTP listener: /metrics, /healthz (and the API later)."
    )

    @field_validator("listen")
    @classmethod
    def _hostport(cls, value: str) -> str:
        parse_hostport(value)
        return value


class StorageSection(Section):
    url: str = Field(
        "sqlite+aiosqlite:////var/lib/gatewayd/gatewayd.db",
        description="SQLAlchemy URL: sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB.",
    )
    pool_size: int = Field(5, ge=1, description="Database connections per instance (PostgreSQL).")

    @field_validator("url")
    @classmethod
    def _driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value


class TLSSection(Section):
    cert: str = Field("", description="PEM certificate chain for STARTTLS/TLS on our listeners.")
    key: str = Field("", description="PEM private key for cert. SIGHUP reloads both.")


Action = Literal["tag", "quarantine", "reject"]


class PolicySection(Section):
    spam: Action = Field("tag", description="What to do with spam: tag | quarantine | reject (550 5.7.1).")
    phishing: Action = Field("tag", description="What to do with phishing: tag | quarantine | reject.")
    spam_threshold: float = Field(
        0.5, ge=0, le=1, description="Spam probability at or above which it is spam."
    )
    phishing_threshold: float = Field(0.5, ge=0, le=1, description="Phishing probability threshold.")


class AnalysisSection(Section):
    budget: float = Field(
        2.0, gt=0, description="Seconds the analysis may take per message before rules answer."
    )
    classifier: Literal["rules", "models"] = Field(
        "models",
        description="models = ONNX models (bundled under models/) with the rules as fallback; rules = "
        "heuristics only.",
    )
    models_dir: str = Field("", description="Directory of the ONNX model files; empty = the bundled models/.")
    threads: int = Field(2, ge=1, le=64, description="onnxruntime intra-op threads.")
    max_batch: int = Field(16, ge=1, le=256, description="Most messages in one model batch.")
    batch_wait: float = Field(0.005, ge=0, description="Seconds to wait to fill a batch.")
    cache_size: int = Field(4096, ge=0, description="Analyses remembered by content hash (0 = off).")

    @field_validator("budget", "batch_wait", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class UpstreamIMAP(Section):
    host: str = Field("127.0.0.1", description="Upstream IMAP server.")
    port: int = Field(143, ge=1, le=65535, description="Upstream IMAP port.")
    tls: Literal["none", "starttls", "tls"] = Field("none", description="none | starttls | tls.")
    ca_file: str = Field("", description="CA bundle for the upstream certificate; empty = system store.")
    verify: bool = Field(True, description="Verify the upstream certificate and host name.")
    timeout: float = Field(30.0, gt=0, description="Seconds to wait for the upstream greeting and login.")


class MasterUser(Section):
    enabled: bool = Field(False, description="Watch mailboxes with a master login even when no client is on.")
    user: str = Field("", description="Master user name (Dovecot: login as user*master).")
    password: str = Field("", description="Master password (keep this file readable by gatewayd only).")
    separator: str = Field("*", description="Separator between the user and the master user name.")
    users: list[str] = Field(default_factory=list, description="Users whose INBOX is watched.")


class IMAPSection(Section):
    listen: list[str] = Field(
        default_factory=list,
        description="Plain listener(s) host:port (STARTTLS offered), e.g. 127.0.0.1:1143.",
    )
    tls_listen: list[str] = Field(default_factory=list, description="Implicit-TLS listener(s) host:port.")
    allow_plaintext_auth: bool = Field(
        False, description="Allow LOGIN/AUTHENTICATE before STARTTLS (else LOGINDISABLED is advertised)."
    )
    account_domain: str = Field(
        "",
        description="Domain appended to IMAP logins without '@' to name the account, so that metadata "
        "recorded for alice@example.org on the SMTP path is alice's too; empty = the login as given.",
    )
    watch: bool = Field(True, description="Watch INBOX of logged-in users and write verdict keywords.")
    move_junk: bool = Field(False, description="Move $Junk mail to the mailbox with SPECIAL-USE \\Junk.")
    idle_timeout: float = Field(1800.0, gt=0, description="Seconds of client silence before BYE (IDLE too).")
    upstream: UpstreamIMAP = Field(default_factory=UpstreamIMAP)  # type: ignore[arg-type]
    master_user: MasterUser = Field(default_factory=MasterUser)  # type: ignore[arg-type]

    _v = field_validator("listen", "tls_listen")(_check_listeners)


class LoggingSection(Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least severe level logged."
    )
    format: Literal["text", "json"] = Field("text", description="text (key=value) or json lines.")


class Settings(BaseSettings):
    """All of gatewayd's configuration."""

    model_config = SettingsConfigDict(env_prefix="GATEWAYD_", env_nested_delimiter="__", extra="forbid")

    smtp: SMTPSection = Field(default_factory=SMTPSection)  # type: ignore[arg-type]
    spool: SpoolSection = Field(default_factory=SpoolSection)  # type: ignore[arg-type]
    http: HTTPSection = Field(default_factory=HTTPSection)  # type: ignore[arg-type]
    storage: StorageSection = Field(default_factory=StorageSection)  # type: ignore[arg-type]
    tls: TLSSection = Field(default_factory=TLSSection)  # type: ignore[arg-type]
    policy: PolicySection = Field(default_factory=PolicySection)  # type: ignore[arg-type]
    analysis: AnalysisSection = Field(default_factory=AnalysisSection)  # type: ignore[arg-type]
    imap: IMAPSection = Field(default_factory=IMAPSection)  # type: ignore[arg-type]
    logging: LoggingSection = Field(default_factory=LoggingSection)  # type: ignore[arg-type]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file, which is passed as init arguments.
        return env_settings, init_settings


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every error as ``dotted.path: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def find_config(path: str | os.PathLike[str] | None) -> Path | None:
    """The file to load: the one given, else the first default that exists, else None (all defaults)."""
    if path is not None:
        return Path(path)
    return next((p for p in DEFAULT_CONFIG_PATHS if p.is_file()), None)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Load and validate; raise ConfigError naming every problem with its dotted path."""
    data: dict[str, Any] = {}
    source = find_config(path)
    if source is not None:
        try:
            data = tomllib.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"{source}: no such file"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{source}: cannot read: {exc.__class__.__name__}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{source}: not valid TOML: {exc}"]) from None
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"]) or "(top)"
            problems.append(f"{where}: {err['msg']}")
        raise ConfigError(problems) from None
