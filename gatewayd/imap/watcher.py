"""Watch a user's INBOX upstream and write gatewayd's verdicts back as IMAP keywords.

One watcher per account, over its own aioimaplib connection: SELECT INBOX, then IDLE (or NOOP polling
when the server has no IDLE). Each new UID is fetched with ``BODY.PEEK[]`` (``\\Seen`` untouched); the
verdict the SMTP path recorded is reused when the message carries ``X-Gatewayd-Id`` or a known
Message-ID, else the message is analysed. Keywords go back with ``UID STORE +FLAGS.SILENT`` only when
PERMANENTFLAGS contains ``\\*``. With ``imap.move_junk``, spam then moves to the mailbox LIST shows with
SPECIAL-USE ``\\Junk`` (UID MOVE, else UID COPY + ``\\Deleted`` + UID EXPUNGE). A user who sets ``$NotJunk``
(or clears ``$Junk``), or who moves spam back into INBOX, is recorded as feedback. The password lives in
this object's memory for as long as a session of the user is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aioimaplib

from gatewayd.analysis.facts import CATEGORIES, MessageFacts, Verdict
from gatewayd.analysis.pipeline import record_of
from gatewayd.ids import new_id
from gatewayd.imap import metrics
from gatewayd.mime import extract_facts
from gatewayd.settings import IMAPSection, PolicySection
from gatewayd.store.records import MailboxEntry, MessageRecord
from gatewayd.tls import client_context

log = logging.getLogger("gatewayd.imap.watcher")

MAILBOX = "INBOX"
IDLE_RENEW = 300.0  # re-issue IDLE this often (servers drop IDLE after ~30 min)
POLL_INTERVAL = 30.0  # NOOP polling when the server has no IDLE
FIRST_SCAN = 200  # on first sight of a mailbox, analyse at most this many of its newest messages
RETRY_MAX = 60.0
JUNK, NOT_JUNK, PHISHING, IMPORTANT = "$Junk", "$NotJunk", "$Phishing", "$Important"
#: Documented keywords for categories (no registered ones exist): ``$gw_newsletter`` etc.
CATEGORY_KEYWORDS = {c: f"$gw_{c}" for c in CATEGORIES if c != "personal"}
_UID_RE = re.compile(rb"UID (\d+)")
_FLAGS_RE = re.compile(rb"FLAGS \(([^)]*)\)")
_COPYUID_RE = re.compile(rb"\[COPYUID (\d+) \S+ (\d+)\]")
#: An untagged LIST reply as aioimaplib hands it on (without "* LIST "): attributes, delimiter, name.
_LIST_RE = re.compile(rb'^(?:LIST )?\(([^)]*)\) (?:NIL|"(?:[^"\\]|\\.)*") (.+)$')
MOVED_MEMORY = 2000  # gatewayd ids this watcher moved to Junk, remembered to spot them coming back


class AnalysisPipeline(Protocol):
    async def analyse(self, facts: MessageFacts) -> Verdict: ...


def keywords_for(record: MessageRecord) -> list[str]:
    """The IMAP keywords that express a recorded verdict."""
    out = []
    if record.is_spam:
        out.append(JUNK)
    if record.is_phishing:
        out.append(PHISHING)
    if record.important:
        out.append(IMPORTANT)
    if record.category in CATEGORY_KEYWORDS:
        out.append(CATEGORY_KEYWORDS[record.category])
    return out


def account_of(login: str, domain: str) -> str:
    """The account a login owns metadata as: the address, lower-cased (``alice`` -> ``alice@domain``)."""
    login = login.lower()
    return f"{login}@{domain.lower()}" if domain and "@" not in login else login


def record_from(verdict: Verdict, facts: MessageFacts, account: str, policy: PolicySection) -> MessageRecord:
    return record_of(new_id(), facts, verdict, policy, accounts=[account], delivery_state="delivered",
                     source="imap")


def _flags(response: Any) -> set[str]:
    """The FLAGS of a FETCH response, lower-cased."""
    for line in response.lines:
        if isinstance(line, bytes) and (m := _FLAGS_RE.search(line)):
            return {f.decode(errors="replace").lower() for f in m.group(1).split()}
    return set()


def _mailbox_name(raw: bytes) -> str:
    """A mailbox name from a LIST reply: an atom as is, a quoted string unquoted."""
    raw = raw.strip()
    if raw.startswith(b'"') and raw.endswith(b'"') and len(raw) >= 2:
        raw = re.sub(rb"\\(.)", rb"\1", raw[1:-1])
    return raw.decode(errors="replace")


def junk_mailbox(lines: list[Any]) -> str | None:
    """The name of the mailbox with the ``\\Junk`` attribute in LIST replies, if any."""
    for line in lines:
        if isinstance(line, bytes) and (m := _LIST_RE.match(line)):
            if "\\junk" in m.group(1).decode(errors="replace").lower().split():
                return _mailbox_name(m.group(2))
    return None


def _literal(response: Any) -> bytes | None:
    for line in response.lines:
        if isinstance(line, bytearray):
            return bytes(line)
    return None


class Watcher:
    """Watch one account's INBOX until cancelled; reconnects with backoff after upstream failures."""

    def __init__(
        self, account: str, login: str, password: str, cfg: IMAPSection, *, store: Any,
        pipeline: AnalysisPipeline | None, policy: PolicySection, first_scan: int = FIRST_SCAN,
    ) -> None:
        self.account = account.lower()
        self.first_scan = first_scan
        self._login = login
        self._password = password
        self.cfg = cfg
        self.store = store
        self.pipeline = pipeline
        self.policy = policy
        self.uidvalidity = 0
        self.last_uid = 0
        self.keywords_ok = False
        self._tagged: dict[int, tuple[str, bool]] = {}  # uid -> (gatewayd id, we marked it $Junk)
        self._junk_mailbox: str | None = None
        self._moved: dict[str, None] = {}  # gatewayd ids moved to Junk, oldest first (an ordered set)
        self._news = False  # an EXISTS was seen since the last scan began

    def __repr__(self) -> str:  # never show the password
        return f"Watcher({self.account!r})"

    async def run(self) -> None:
        delay = 1.0
        while True:
            try:
                await self._watch()
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.UPSTREAM_ERRORS.labels("watcher").inc()
                log.warning("event=imap_watch_error account=%s error=%s", self.account, type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _connect(self) -> aioimaplib.IMAP4:
        up = self.cfg.upstream
        ctx = client_context(up.ca_file, up.verify) if up.tls != "none" else None
        imap: aioimaplib.IMAP4
        if up.tls == "tls":
            imap = aioimaplib.IMAP4_SSL(up.host, up.port, timeout=up.timeout, ssl_context=ctx)
        else:
            imap = aioimaplib.IMAP4(up.host, up.port, timeout=up.timeout)
        await imap.wait_hello_from_server()
        if up.tls == "starttls":
            assert ctx is not None
            proto = imap.protocol
            await proto.execute(aioimaplib.Command("STARTTLS", proto.new_tag(), loop=proto.loop))
            loop = asyncio.get_running_loop()
            proto.transport = await loop.start_tls(proto.transport, proto, ctx, server_hostname=up.host)
            await proto.capability()
        response = await imap.login(aioimaplib.quoted(self._login), self._password)
        if response.result != "OK":
            raise PermissionError("upstream refused the watcher's login")
        # Servers add capabilities once logged in (Dovecot: MOVE, UIDPLUS, SPECIAL-USE); aioimaplib keeps
        # the greeting's list, so ask again.
        await imap.protocol.capability()
        # aioimaplib drops an untagged EXISTS that arrives during a command other than IDLE/NOOP; a
        # message delivered while we SEARCH would then wait for the next IDLE renewal. Note them.
        proto = imap.protocol
        untagged = proto._untagged_response

        def spy(line: bytes) -> Any:
            if line.endswith(b" EXISTS"):
                self._news = True
            return untagged(line)

        proto._untagged_response = spy
        return imap

    async def _watch(self) -> None:
        imap = await self._connect()
        try:
            await self._select(imap)
            while True:
                await self._scan(imap)
                await self._check_feedback(imap)
                await self._wait(imap)
        finally:
            with contextlib.suppress(Exception):
                imap.protocol.transport.close()

    async def _select(self, imap: aioimaplib.IMAP4) -> None:
        response = await imap.select(MAILBOX)
        if response.result != "OK":
            raise RuntimeError("SELECT INBOX failed")
        uidnext = 0
        for line in response.lines:
            if not isinstance(line, bytes):
                continue
            if m := re.search(rb"\[UIDVALIDITY (\d+)\]", line):
                uidvalidity = int(m.group(1))
                if uidvalidity != self.uidvalidity:
                    self.uidvalidity, self.last_uid = uidvalidity, 0
                    self._tagged.clear()
            elif m := re.search(rb"\[UIDNEXT (\d+)\]", line):
                uidnext = int(m.group(1))
            elif m := re.search(rb"\[PERMANENTFLAGS \(([^)]*)\)\]", line):
                self.keywords_ok = b"\\*" in m.group(1).split()
        if self.last_uid == 0:
            known = await self.store.max_uid(self.account, MAILBOX, self.uidvalidity) if self.store else 0
            self.last_uid = known or max(0, uidnext - 1 - self.first_scan)

    async def _scan(self, imap: aioimaplib.IMAP4) -> None:
        while True:
            self._news = False
            response = await imap.uid_search(f"UID {self.last_uid + 1}:*", charset=None)
            uids: list[int] = []
            for line in response.lines[:-1]:  # aioimaplib drops "* SEARCH"; the last line is the tagged text
                if isinstance(line, bytes) and not line.endswith((b" EXISTS", b" RECENT", b" EXPUNGE")):
                    uids += [int(x) for x in line.removeprefix(b"SEARCH").split() if x.isdigit()]
            for uid in sorted(u for u in uids if u > self.last_uid):
                await self._process(imap, uid)
                self.last_uid = uid
            if not self._news:
                return

    async def _process(self, imap: aioimaplib.IMAP4, uid: int) -> None:
        response = await imap.uid("fetch", str(uid), "(FLAGS BODY.PEEK[])")
        raw = _literal(response)
        if response.result != "OK" or raw is None:
            return  # expunged meanwhile
        facts = extract_facts(raw)
        record = await self._known(facts)
        if record is not None:
            if self._came_back(record, _flags(response)):
                await self._moved_out_of_junk(uid, record)
                return
            metrics.MESSAGES_ANALYSED.labels("reused").inc()
            if self.store is not None and self.account not in record.accounts:
                record.accounts.append(self.account)
                await self.store.record_messages([record])
        else:
            if self.pipeline is None:
                return
            verdict = await self.pipeline.analyse(facts)
            record = record_from(verdict, facts, self.account, self.policy)
            metrics.MESSAGES_ANALYSED.labels("analysed").inc()
            if self.store is not None:
                await self.store.record_messages([record])
        keywords = keywords_for(record)
        written: list[str] = []
        if keywords and self.keywords_ok:
            result = await imap.uid("store", str(uid), "+FLAGS.SILENT", "(" + " ".join(keywords) + ")")
            if result.result == "OK":
                metrics.KEYWORD_WRITES.inc()
                written = keywords
            else:
                metrics.KEYWORD_FAILURES.labels("refused").inc()
        elif keywords:
            metrics.KEYWORD_FAILURES.labels("no_permanent_keywords").inc()
        if self.store is not None:
            await self.store.record_mailbox_entry(
                MailboxEntry(self.account, MAILBOX, self.uidvalidity, uid, record.id, written)
            )
        log.info("event=imap_message_analysed account=%s uid=%d id=%s keywords=%s",
                 self.account, uid, record.id, ",".join(written) or "-")
        moved = record.is_spam and self.cfg.move_junk and await self._move_to_junk(imap, uid, record, written)
        if not moved:
            self._tagged[uid] = (record.id, JUNK in written)
            while len(self._tagged) > 2000:
                del self._tagged[next(iter(self._tagged))]

    def _came_back(self, record: MessageRecord, flags: set[str]) -> bool:
        """Whether a message new to INBOX is one gatewayd judged spam that the user moved back.

        A fresh delivery carries neither ``$Junk`` nor ``$NotJunk``; a message gatewayd tagged (or the
        user's client judged) and that was moved keeps its flags. Ids this watcher moved count too.
        """
        if not record.is_spam:
            return False
        return record.id in self._moved or bool(flags & {JUNK.lower(), NOT_JUNK.lower()})

    async def _moved_out_of_junk(self, uid: int, record: MessageRecord) -> None:
        """The user took spam back into INBOX: feedback, and leave it there untouched (no move, no tags)."""
        self._moved.pop(record.id, None)
        metrics.FEEDBACK.labels("moved_out_of_junk").inc()
        if self.store is not None:
            await self.store.record_feedback(self.account, record.id, "moved_out_of_junk")
            await self.store.record_mailbox_entry(
                MailboxEntry(self.account, MAILBOX, self.uidvalidity, uid, record.id, [])
            )
        log.info("event=imap_feedback account=%s id=%s kind=moved_out_of_junk", self.account, record.id)

    async def _move_to_junk(self, imap: aioimaplib.IMAP4, uid: int, record: MessageRecord,
                            keywords: list[str]) -> bool:
        """Move ``uid`` to the \\Junk mailbox; record where it landed when the server says (COPYUID)."""
        junk = await self._junk(imap)
        if junk is None:
            return False
        if imap.has_capability("MOVE"):
            response = await imap.uid("move", str(uid), aioimaplib.quoted(junk))
        elif imap.has_capability("UIDPLUS"):  # UID EXPUNGE leaves other \Deleted messages alone
            response = await imap.uid("copy", str(uid), aioimaplib.quoted(junk))
            if response.result == "OK":
                deleted = await imap.uid("store", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
                if deleted.result == "OK":
                    await imap.uid("expunge", str(uid))
        else:
            return False  # a plain EXPUNGE could remove what the user marked \Deleted
        if response.result != "OK":
            log.warning("event=imap_junk_move_failed account=%s uid=%d", self.account, uid)
            return False
        self._moved[record.id] = None
        while len(self._moved) > MOVED_MEMORY:
            del self._moved[next(iter(self._moved))]
        copyuid = next((m for line in response.lines if isinstance(line, bytes)
                        and (m := _COPYUID_RE.search(line))), None)
        if copyuid is not None and self.store is not None:
            await self.store.record_mailbox_entry(MailboxEntry(
                self.account, junk, int(copyuid.group(1)), int(copyuid.group(2)), record.id, keywords))
        log.info("event=imap_junk_moved account=%s uid=%d id=%s mailbox=%s",
                 self.account, uid, record.id, junk)
        return True

    async def _known(self, facts: MessageFacts) -> MessageRecord | None:
        """The record the SMTP path (or an earlier watch) made for this message, if any."""
        if self.store is None:
            return None
        gw_id = facts.header("X-Gatewayd-Id").strip()
        if gw_id:
            found: MessageRecord | None = await self.store.get_message(gw_id)
            if found is not None:
                return found
        if facts.message_id:
            records: list[MessageRecord] = await self.store.find_by_message_id(facts.message_id)
            mine = [r for r in records if self.account in r.accounts]
            return (mine or records)[0] if records else None
        return None

    async def _junk(self, imap: aioimaplib.IMAP4) -> str | None:
        """The mailbox with SPECIAL-USE \\Junk (RFC 6154), looked up until one is found."""
        if self._junk_mailbox is None:
            args = ['""', '"*"']
            if imap.has_capability("SPECIAL-USE") and imap.has_capability("LIST-EXTENDED"):
                args.append("RETURN (SPECIAL-USE)")
            response = await imap.protocol.simple_command("LIST", *args)
            self._junk_mailbox = junk_mailbox(response.lines)
        return self._junk_mailbox

    async def _check_feedback(self, imap: aioimaplib.IMAP4) -> None:
        if not self._tagged or self.store is None:
            return
        uids = ",".join(str(u) for u in self._tagged)
        response = await imap.uid("fetch", uids, "(FLAGS)")
        for line in response.lines:
            if not isinstance(line, bytes):
                continue
            m_uid, m_flags = _UID_RE.search(line), _FLAGS_RE.search(line)
            if m_uid is None or m_flags is None or int(m_uid.group(1)) not in self._tagged:
                continue
            uid = int(m_uid.group(1))
            flags = {f.decode().lower() for f in m_flags.group(1).split()}
            gw_id, marked_junk = self._tagged[uid]
            kind = ""
            if NOT_JUNK.lower() in flags or (marked_junk and JUNK.lower() not in flags):
                kind = "not_junk"
            elif not marked_junk and JUNK.lower() in flags:
                kind = "junk"
            if kind:
                del self._tagged[uid]
                metrics.FEEDBACK.labels(kind).inc()
                await self.store.record_feedback(self.account, gw_id, kind)
                log.info("event=imap_feedback account=%s id=%s kind=%s", self.account, gw_id, kind)

    async def _wait(self, imap: aioimaplib.IMAP4) -> None:
        """Return when the mailbox may have changed (new message, flag change) or after a while."""
        if not imap.has_capability("IDLE"):
            await asyncio.sleep(POLL_INTERVAL)
            await imap.noop()
            return
        if self._news:
            return
        idle = await imap.idle_start(timeout=IDLE_RENEW)
        try:
            while imap.has_pending_idle():
                push = await imap.wait_server_push()
                if push == aioimaplib.STOP_WAIT_SERVER_PUSH or any(
                    isinstance(x, bytes) and (b"EXISTS" in x or b"FETCH" in x) for x in push
                ):
                    break
        finally:
            imap.idle_done()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(idle, self.cfg.upstream.timeout)


class WatcherPool:
    """Watchers by account: one per account however many sessions it has; master-user ones always on."""

    def __init__(self, cfg: IMAPSection, *, store: Any, pipeline: AnalysisPipeline | None,
                 policy: PolicySection, first_scan: int = FIRST_SCAN) -> None:
        self.cfg = cfg
        self.first_scan = first_scan  # messages already there when an account is first watched
        self.store = store
        self.pipeline = pipeline
        self.policy = policy
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._refs: dict[str, int] = {}
        self._permanent: set[str] = set()

    def _start(self, account: str, login: str, password: str) -> None:
        watcher = Watcher(account, login, password, self.cfg, store=self.store, pipeline=self.pipeline,
                          policy=self.policy, first_scan=self.first_scan)
        self._tasks[account] = asyncio.create_task(watcher.run(), name=f"imap-watch-{account}")

    async def start_master(self) -> None:
        """Start the always-on watchers of ``[imap.master_user]``."""
        master = self.cfg.master_user
        if not (self.cfg.watch and master.enabled and master.user):
            return
        for user in master.users:
            account = account_of(user, self.cfg.account_domain)
            self._permanent.add(account)
            self._start(account, f"{user}{master.separator}{master.user}", master.password)

    async def attach(self, user: str, password: str) -> Callable[[], Awaitable[None]]:
        """A session of ``user`` logged in: make sure the account is watched until ``detach`` is called."""
        account = account_of(user, self.cfg.account_domain)
        self._refs[account] = self._refs.get(account, 0) + 1
        if account not in self._tasks:
            self._start(account, user, password)

        async def detach() -> None:
            self._refs[account] -= 1
            if self._refs[account] <= 0:
                del self._refs[account]
                if account not in self._permanent and (task := self._tasks.pop(account, None)):
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task

        return detach

    @property
    def watched(self) -> list[str]:
        return sorted(self._tasks)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


