"""The monitor's TOML file (docs/guide-monitoring.md has a complete example).

:func:`load` returns a :class:`MonitorConfig` or raises ConfigError naming
every problem at once; :func:`check_config` returns the problems and notes
without raising (``rekkord monitor check-config``).  Key files are opened
(an audit key, and only an audit key, is accepted); nothing is connected to.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field

from ..errors import ConfigError, RekkordError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
HASH = re.compile(r"\$argon2id\$v=19\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+\Z")
ROLES = ("viewer", "admin")
WARNINGS_MODES = ("alert", "show")
SECURITY = ("none", "starttls", "tls")
STORAGE_KEYS = ("endpoint_url", "region", "access_key_id", "secret_access_key", "connections", "sftp_key_file",
                "sftp_password", "sftp_fingerprint")
DEFAULT_PORT = 8750


def parse_duration(text) -> float:
    """``90``, ``90s``, ``15m``, ``26h``, ``2d``, ``1w``, ``1d12h``: seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ValueError("a duration cannot be negative")
        return float(text)
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration")
    t = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", t)
    if not parts or "".join(n + u for n, u in parts) != t:
        raise ValueError(f"{text!r} is not a duration (use e.g. 90s, 15m, 26h, 2d, 1w, 1d12h)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def parse_percent(text) -> float:
    """``"20%"`` → 0.2."""
    if not isinstance(text, str) or not re.fullmatch(r"\d+(\.\d+)?%", text.strip()):
        raise ValueError(f"{text!r} is not a percentage (use e.g. \"20%\")")
    return float(text.strip()[:-1]) / 100


def parse_listen(text) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` (or a bare host: port 8750)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"{text!r} is not an address (use e.g. \"127.0.0.1:8750\")")
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", text)
    if not m:
        raise ValueError(f"{text!r} is not an address (use HOST:PORT, or [IPv6]:PORT)")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4) or DEFAULT_PORT)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ChannelRule:
    """What a channel is expected to do."""

    max_age: float = 26 * 3600
    hosts: tuple[str, ...] = ()  # empty: any host
    warnings: str = "alert"  # alert | show


@dataclass
class RepoConfig:
    name: str
    url: str
    key_file: str
    passphrase_file: str | None = None
    storage: dict = field(default_factory=dict, repr=False)  # may hold credentials
    mail_to: list[str] = field(default_factory=list)
    check_every: float = 24 * 3600
    check_subset: str | None = None
    grow_limit: float = 1.0
    shrink_limit: float = 0.2
    defaults: ChannelRule = field(default_factory=ChannelRule)
    channels: dict[str, ChannelRule] = field(default_factory=dict)

    def rule(self, channel: str) -> ChannelRule:
        return self.channels.get(channel, self.defaults)

    def load_key(self):
        """The audit key (already checked by :func:`load`)."""
        from .. import keys

        text = keys.read_key_file(self.key_file)
        passphrase = None
        if keys.is_protected(text):
            if not self.passphrase_file:
                raise ConfigError(f"key file {self.key_file} is protected by a passphrase: set passphrase_file")
            try:
                with open(self.passphrase_file, encoding="utf-8") as f:
                    passphrase = f.read().rstrip("\n")
            except OSError as e:
                raise ConfigError(f"cannot read passphrase_file {self.passphrase_file}: {e.strerror}") from None
        return keys.loads(text, passphrase)


@dataclass
class MailConfig:
    host: str = "localhost"
    port: int = 25
    security: str = "none"  # none | starttls | tls
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str = "rekkord-monitor@localhost"
    to: list[str] = field(default_factory=list)
    timeout: float = 30.0


@dataclass
class WebhookConfig:
    name: str
    url: str
    headers: dict = field(default_factory=dict, repr=False)  # may hold a token
    fields: dict = field(default_factory=dict)
    timeout: float = 30.0


@dataclass
class User:
    name: str
    role: str
    password_hash: str = field(repr=False)


@dataclass
class MonitorConfig:
    path: str
    listen: tuple[str, int] = ("127.0.0.1", DEFAULT_PORT)
    state_dir: str = "/var/lib/rekkord-monitor"
    base_url: str | None = None
    poll_every: float = 300.0
    check_every: float = 24 * 3600
    repeat_after: float = 12 * 3600
    unreachable_after: int = 2
    burst: int = 5
    tls_cert: str | None = None
    tls_key: str | None = None
    trusted_proxies: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    session_lifetime: float = 12 * 3600
    secure_cookies: bool = False
    metrics_token: str | None = field(default=None, repr=False)
    metrics_listen: tuple[str, int] | None = None
    login_attempts: int = 5
    login_window: float = 15 * 60
    delivery_attempts: int = 8
    retry_delay: float = 30.0
    workers: int = 2
    repos: list[RepoConfig] = field(default_factory=list)
    mail: MailConfig | None = None
    webhooks: list[WebhookConfig] = field(default_factory=list)
    users: dict[str, User] = field(default_factory=dict)

    @property
    def state_path(self) -> str:
        return os.path.join(self.state_dir, "state.sqlite")

    def repo(self, name: str) -> RepoConfig | None:
        return next((r for r in self.repos if r.name == name), None)


# --- parsing ----------------------------------------------------------------------------------

MONITOR_KEYS = {"listen", "state_dir", "base_url", "poll_every", "check_every", "repeat_after",
                "unreachable_after", "burst", "tls_cert", "tls_key", "trusted_proxies", "session_lifetime",
                "secure_cookies", "metrics_token", "metrics_listen", "login_attempts", "login_window",
                "delivery_attempts", "retry_delay", "workers"}
RULE_KEYS = {"max_age", "hosts", "warnings"}
LIMIT_KEYS = {"grow_limit", "shrink_limit"}
REPO_KEYS = {"name", "url", "key_file", "passphrase_file", "storage", "mail_to", "check_every", "check_subset",
             "channels"} | RULE_KEYS | LIMIT_KEYS
MAIL_KEYS = {"host", "port", "security", "username", "password", "from", "to", "timeout"}
WEBHOOK_KEYS = {"name", "url", "headers", "fields", "timeout"}
USER_KEYS = {"name", "role", "password_hash"}
TOP_KEYS = {"monitor", "defaults", "repository", "mail", "webhook", "user"}


class _Parser:
    def __init__(self, path: str):
        self.path = path
        self.base = os.path.dirname(os.path.abspath(path))
        self.errors: list[str] = []
        self.notes: list[str] = []

    def err(self, where: str, msg: str):
        self.errors.append(f"{where}: {msg}" if where else msg)

    def table(self, d, where: str, known: set[str]) -> dict:
        if not isinstance(d, dict):
            self.err(where, "must be a table")
            return {}
        unknown = sorted(set(d) - known)
        if unknown:
            self.err(where, f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                            f"(known: {', '.join(sorted(known))})")
        return d

    def get(self, d: dict, key: str, where: str, conv, default=None):
        if key not in d:
            return default
        try:
            return conv(d[key])
        except (ValueError, TypeError) as e:
            self.err(f"{where}: {key}", str(e))
            return default

    def path_of(self, p) -> str:
        if not isinstance(p, str) or not p:
            raise ValueError(f"{p!r} is not a file name")
        return os.path.normpath(os.path.join(self.base, p))  # (no ~: the library reads no environment)

    def existing_file(self, p) -> str:
        path = self.path_of(p)
        if not os.path.isfile(path):
            raise ValueError(f"{path} does not exist or is not a file")
        return path

    # ---- sections ---------------------------------------------------------------------------

    def rule(self, d: dict, where: str, base: ChannelRule) -> ChannelRule:
        return ChannelRule(
            max_age=self.get(d, "max_age", where, _positive_duration, base.max_age),
            hosts=tuple(self.get(d, "hosts", where, _strings, list(base.hosts))),
            warnings=self.get(d, "warnings", where, _choice(WARNINGS_MODES), base.warnings))

    def parse(self, data: dict) -> MonitorConfig:
        self.table(data, "", TOP_KEYS)
        cfg = MonitorConfig(path=self.path)
        m = self.table(data.get("monitor", {}), "[monitor]", MONITOR_KEYS)
        w = "[monitor]"
        cfg.listen = self.get(m, "listen", w, parse_listen, cfg.listen)
        cfg.state_dir = self.get(m, "state_dir", w, self.path_of, cfg.state_dir)
        cfg.base_url = self.get(m, "base_url", w, _url, None)
        cfg.poll_every = self.get(m, "poll_every", w, _positive_duration, cfg.poll_every)
        cfg.check_every = self.get(m, "check_every", w, _positive_duration, cfg.check_every)
        cfg.repeat_after = self.get(m, "repeat_after", w, _positive_duration, cfg.repeat_after)
        cfg.unreachable_after = self.get(m, "unreachable_after", w, _int_range(1, 100), cfg.unreachable_after)
        cfg.burst = self.get(m, "burst", w, _int_range(1, 1000), cfg.burst)
        cfg.tls_cert = self.get(m, "tls_cert", w, self.existing_file, None)
        cfg.tls_key = self.get(m, "tls_key", w, self.existing_file, None)
        if (m.get("tls_cert") is None) != (m.get("tls_key") is None):
            self.err(w, "tls_cert and tls_key go together")
        cfg.trusted_proxies = self.get(m, "trusted_proxies", w, _strings, cfg.trusted_proxies)
        cfg.session_lifetime = self.get(m, "session_lifetime", w, _positive_duration, cfg.session_lifetime)
        https = bool(cfg.tls_cert) or (cfg.base_url or "").startswith("https://")
        cfg.secure_cookies = self.get(m, "secure_cookies", w, _bool, https)
        cfg.metrics_token = self.get(m, "metrics_token", w, _token, None)
        cfg.metrics_listen = self.get(m, "metrics_listen", w, parse_listen, None)
        cfg.login_attempts = self.get(m, "login_attempts", w, _int_range(1, 1000), cfg.login_attempts)
        cfg.login_window = self.get(m, "login_window", w, _positive_duration, cfg.login_window)
        cfg.delivery_attempts = self.get(m, "delivery_attempts", w, _int_range(1, 100), cfg.delivery_attempts)
        cfg.retry_delay = self.get(m, "retry_delay", w, _positive_duration, cfg.retry_delay)
        cfg.workers = self.get(m, "workers", w, _int_range(1, 32), cfg.workers)
        if not is_loopback(cfg.listen[0]) and not cfg.tls_cert:
            self.notes.append(f"[monitor] listen {cfg.listen[0]}:{cfg.listen[1]} is not a loopback address and "
                              "there is no tls_cert: serve it behind a TLS reverse proxy")
        if cfg.metrics_listen and cfg.metrics_listen[1] == cfg.listen[1]:
            self.err(w, "metrics_listen must use another port than listen")
        if not cfg.metrics_token and not cfg.metrics_listen:
            self.notes.append("[monitor] neither metrics_token nor metrics_listen is set: /metrics is not served")

        d = self.table(data.get("defaults", {}), "[defaults]", RULE_KEYS | LIMIT_KEYS | {"check_subset"})
        defaults = self.rule(d, "[defaults]", ChannelRule())
        limits = {"grow_limit": self.get(d, "grow_limit", "[defaults]", parse_percent, 1.0),
                  "shrink_limit": self.get(d, "shrink_limit", "[defaults]", parse_percent, 0.2)}
        subset = self.get(d, "check_subset", "[defaults]", _subset, None)

        repos = data.get("repository", [])
        if not isinstance(repos, list):
            self.err("[[repository]]", "must be an array of tables ([[repository]])")
            repos = []
        if not repos:
            self.err("", "no [[repository]] to watch")
        seen_names: set[str] = set()
        seen_ids: dict[str, str] = {}
        for i, r in enumerate(repos, 1):
            rname = r.get("name") if isinstance(r, dict) else None
            if isinstance(rname, str) and rname in seen_names:
                self.err(f"[[repository]] #{i}", f"name {rname!r} is used twice")
            seen_names.add(rname)
            rc = self.repo(r, i, cfg, defaults, limits, subset)
            if rc is None:
                continue
            key = self.key(rc, f"[[repository]] #{i} ({rc.name})")
            if key is not None:
                if key.repo in seen_ids:
                    self.err(f"[[repository]] #{i} ({rc.name})", f"watches the same repository ({key.repo}) as "
                             f"{seen_ids[key.repo]!r}")
                seen_ids.setdefault(key.repo, rc.name)
            cfg.repos.append(rc)

        if "mail" in data:
            cfg.mail = self.mail(self.table(data["mail"], "[mail]", MAIL_KEYS))
            if cfg.mail and "to" not in data["mail"] and not any(r.mail_to for r in cfg.repos):
                self.err("[mail]", "no recipients: set to = [...] (or mail_to in a [[repository]])")
        elif any(r.mail_to for r in cfg.repos):
            self.err("[[repository]]", "mail_to is set but there is no [mail] section (SMTP server)")
        hooks = data.get("webhook", [])
        if not isinstance(hooks, list):
            self.err("[[webhook]]", "must be an array of tables ([[webhook]])")
            hooks = []
        for i, h in enumerate(hooks, 1):
            wh = self.webhook(self.table(h, f"[[webhook]] #{i}", WEBHOOK_KEYS), i)
            if wh is not None:
                if any(x.name == wh.name for x in cfg.webhooks):
                    self.err(f"[[webhook]] #{i}", f"name {wh.name!r} is used twice")
                cfg.webhooks.append(wh)
        if cfg.mail is None and not cfg.webhooks:
            self.notes.append("no [mail] and no [[webhook]]: alerts are shown on the dashboard only")

        users = data.get("user", [])
        if not isinstance(users, list):
            self.err("[[user]]", "must be an array of tables ([[user]])")
            users = []
        for i, u in enumerate(users, 1):
            where = f"[[user]] #{i}"
            u = self.table(u, where, USER_KEYS)
            name = self.get(u, "name", where, _name, None)
            role = self.get(u, "role", where, _choice(ROLES), "viewer")
            h = self.get(u, "password_hash", where, _hash, None)
            if name is None or h is None:
                if "name" not in u or "password_hash" not in u:
                    self.err(where, "needs name and password_hash (make one with `rekkord monitor passwd NAME`)")
                continue
            if name in cfg.users:
                self.err(where, f"user {name!r} is defined twice")
            cfg.users[name] = User(name, role, h)
        if not cfg.users:
            self.err("", "no [[user]]: nobody could log in (add one with `rekkord monitor passwd NAME`)")
        return cfg

    def repo(self, r, i: int, cfg: MonitorConfig, defaults: ChannelRule, limits: dict, subset) -> RepoConfig | None:
        where = f"[[repository]] #{i}"
        r = self.table(r, where, REPO_KEYS)
        if not r:
            return None
        name = self.get(r, "name", where, _name, None)
        if name is None:
            if "name" not in r:
                self.err(where, "needs a name")
            return None
        where = f"{where} ({name})"
        url = self.get(r, "url", where, _nonempty, None)
        if url is None:
            if "url" not in r:
                self.err(where, "needs url (a path, s3://BUCKET/PREFIX or sftp://USER@HOST/PATH)")
            return None
        if "://" not in url:
            url = self.path_of(url)
        elif not url.startswith(("s3://", "sftp://", "file://")):
            self.err(f"{where}: url", f"unknown scheme in {url!r} (use a path, s3:// or sftp://)")
        key_file = self.get(r, "key_file", where, self.existing_file, None)
        if key_file is None:
            if "key_file" not in r:
                self.err(where, "needs key_file (an audit key: `rekkord key derive --role audit`)")
            return None
        st = self.table(r.get("storage", {}), f"{where} storage", set(STORAGE_KEYS))
        storage = {}
        for k, v in st.items():
            if k in STORAGE_KEYS:
                if not isinstance(v, (str, int)) or isinstance(v, bool):
                    self.err(f"{where} storage: {k}", "must be a string")
                    continue
                storage[k] = self.path_of(v) if k == "sftp_key_file" else v
        rule = self.rule(r, where, defaults)
        chans = {}
        ch = r.get("channels", {})
        if not isinstance(ch, dict):
            self.err(f"{where} channels", "must be a table of [repository.channels.NAME] tables")
            ch = {}
        for cname, cd in ch.items():
            cw = f"{where} channel {cname}"
            chans[cname] = self.rule(self.table(cd, cw, RULE_KEYS), cw, rule)
        return RepoConfig(
            name=name, url=url, key_file=key_file,
            passphrase_file=self.get(r, "passphrase_file", where, self.existing_file, None),
            storage=storage, mail_to=self.get(r, "mail_to", where, _addresses, []),
            check_every=self.get(r, "check_every", where, _positive_duration, cfg.check_every),
            check_subset=self.get(r, "check_subset", where, _subset, subset),
            grow_limit=self.get(r, "grow_limit", where, parse_percent, limits["grow_limit"]),
            shrink_limit=self.get(r, "shrink_limit", where, parse_percent, limits["shrink_limit"]),
            defaults=rule, channels=chans)

    def key(self, rc: RepoConfig, where: str):
        try:
            key = rc.load_key()
        except RekkordError as e:
            self.err(f"{where}: key_file", str(e))
            return None
        if key.role != "audit":
            self.err(f"{where}: key_file", f"{rc.key_file} is {'an' if key.role[0] in 'aeiou' else 'a'} {key.role} "
                     "key; the monitor takes audit keys only, so that it can never read a file or a file name "
                     "(derive one with `rekkord key derive --role audit`)")
            return None
        return key

    def mail(self, d: dict) -> MailConfig | None:
        w = "[mail]"
        mc = MailConfig()
        mc.host = self.get(d, "host", w, _nonempty, mc.host)
        mc.security = self.get(d, "security", w, _choice(SECURITY), mc.security)
        mc.port = self.get(d, "port", w, _int_range(1, 65535), 465 if mc.security == "tls" else
                           587 if mc.security == "starttls" else 25)
        mc.username = self.get(d, "username", w, _nonempty, None)
        mc.password = self.get(d, "password", w, _nonempty, None)
        if (mc.username is None) != (mc.password is None):
            self.err(w, "username and password go together")
        mc.sender = self.get(d, "from", w, _address, mc.sender)
        mc.to = self.get(d, "to", w, _addresses, [])
        mc.timeout = self.get(d, "timeout", w, _positive_duration, mc.timeout)
        return mc

    def webhook(self, d: dict, i: int) -> WebhookConfig | None:
        w = f"[[webhook]] #{i}"
        url = self.get(d, "url", w, _url, None)
        if url is None:
            if "url" not in d:
                self.err(w, "needs url")
            return None
        headers = self.get(d, "headers", w, _str_table, {})
        fields = d.get("fields", {})
        if not isinstance(fields, dict):
            self.err(f"{w}: fields", "must be a table")
            fields = {}
        return WebhookConfig(name=self.get(d, "name", w, _name, f"webhook{i}"), url=url, headers=headers,
                             fields=fields, timeout=self.get(d, "timeout", w, _positive_duration, 30.0))


# --- value converters (raise ValueError with a message) -------------------------------------------------------


def _positive_duration(v) -> float:
    x = parse_duration(v)
    if x <= 0:
        raise ValueError("must be more than zero")
    return x


def _int_range(lo: int, hi: int):
    def conv(v):
        if type(v) is not int or not lo <= v <= hi:
            raise ValueError(f"{v!r} is not an integer from {lo} to {hi}")
        return v
    return conv


def _bool(v) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{v!r} is not true or false")
    return v


def _choice(options):
    def conv(v):
        if v not in options:
            raise ValueError(f"{v!r} is not one of {', '.join(options)}")
        return v
    return conv


def _nonempty(v) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"{v!r} is not a non-empty string")
    return v


def _name(v) -> str:
    if not isinstance(v, str) or not NAME.match(v):
        raise ValueError(f"{v!r} is not a name (letters, digits, '.', '_', '-'; at most 64)")
    return v


def _strings(v) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise ValueError(f"{v!r} is not a list of strings")
    return list(v)


def _address(v) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", v):
        raise ValueError(f"{v!r} is not a mail address")
    return v


def _addresses(v) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        raise ValueError(f"{v!r} is not a list of mail addresses")
    return [_address(x) for x in v]


def _url(v) -> str:
    if not isinstance(v, str) or not re.match(r"https?://[^\s/]+", v):
        raise ValueError(f"{v!r} is not an http:// or https:// URL")
    return v


def _token(v) -> str:
    if not isinstance(v, str) or len(v) < 16 or any(c.isspace() for c in v):
        raise ValueError("must be a string of at least 16 characters without spaces")
    return v


def _hash(v) -> str:
    if not isinstance(v, str) or not HASH.match(v):
        raise ValueError("is not an Argon2id hash ($argon2id$v=19$...; make one with `rekkord monitor passwd NAME`)")
    return v


def _str_table(v) -> dict:
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise ValueError("must be a table of strings")
    return dict(v)


def _subset(v) -> str:
    from ..check import parse_subset
    from ..errors import UsageError

    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not a percentage or a size")
    try:
        parse_subset(v)
    except UsageError as e:
        raise ValueError(str(e).split(": ", 1)[-1]) from None
    return v


# --- entry points ---------------------------------------------------------------------------------


def _read(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"monitor config {path} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read monitor config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def check_config(path: str) -> tuple[MonitorConfig | None, list[str], list[str]]:
    """(config or None, errors, notes): every problem of the file at once."""
    p = _Parser(path)
    try:
        data = _read(path)
    except ConfigError as e:
        return None, [str(e)], []
    cfg = p.parse(data)
    return (None if p.errors else cfg), [f"{path}: {e}" for e in p.errors], [f"{path}: {n}" for n in p.notes]


def load(path: str) -> MonitorConfig:
    """The configuration, or ConfigError naming every problem."""
    cfg, errors, _ = check_config(path)
    if errors:
        raise ConfigError("; ".join(errors))
    return cfg
