"""The collective contract every communicator keeps, and the single-process one.

One primitive carries everything: ``collect`` (every rank contributes a JSON-able value;
rank 0, the coordinator, receives them all and answers: one reply for every rank, or each rank
its own), built as gather-to-rank-0 then reply, so that a collective that does not complete in
time can name the late ranks. Messages are JSON bytes, never pickled. ``allgather_json``,
``scatter_json``, ``bcast_json`` and ``agree`` are built on it, so every channel's relay (flat,
or through the domains' leaders: mpicomm.py) serves them all.

Domains (``set_domains``): ``domains[r]`` is rank r's domain (runtime/topology.py: a node-local
directory and its ranks), numbered 0..D-1 by first appearance; a domain's leader is its lowest
rank. With ``combine``, each domain's values are reduced on its leader by
``combine(ranks, values)`` and rank 0 answers one combined value per domain. Channels that
stay flat (this single-process one, torch: torchcomm.py) emulate that here, at rank 0, from
every rank's gathered values, with the same results and the same errors.

Who calls: every method but ``set_domains`` (local) is collective over the communicator's
ranks, called by all of them in the same order. ``agree`` is how a phase ends: it gathers
every rank's outcome and raises the same CheckpointError on every rank if any rank failed.
"""
from __future__ import annotations

import itertools
import json
import operator
import time
import traceback

from ..errors import CheckpointError, CollectiveTimeoutError, ConfigurationError, error_class
from ..options import debug


class Broadcast:
    """The coordinator's answer to a ``collect``: the same value for every rank."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class Scatter:
    """The coordinator's answer to a ``collect``: ``values[r]`` for rank r (with ``combine``:
    ``values[d]`` for every rank of domain d). With ``shared``, the ranks in ``shared_to``
    also get ``shared`` as ``values[r][shared_key]`` (values are dicts then): encoded once and
    sent as a second message from one buffer, so that a large document several ranks need (a
    manifest header for every domain leader) costs the coordinator one copy, not one per
    rank (through leaders: one per leader with recipients in its domain)."""

    __slots__ = ("values", "shared", "shared_key", "shared_to")

    def __init__(self, values: list, *, shared=None, shared_key: str = "shared",
                 shared_to=()):
        self.values = values
        self.shared, self.shared_key, self.shared_to = shared, shared_key, frozenset(shared_to)


class _Replies:
    """Rank 0's encoded answer: ``one`` (the same bytes for every recipient) or ``each``
    (bytes per recipient: rank, or domain in combine mode), the encoded shared document of a
    Scatter (None: none) and the recipients it goes to."""

    __slots__ = ("one", "each", "shared", "shared_to")

    def __init__(self, one=None, each=None, shared=None, shared_to=frozenset()):
        self.one, self.each, self.shared, self.shared_to = one, each, shared, shared_to

    def of(self, i: int) -> bytes:
        return self.one if self.one is not None else self.each[i]


class _Failed(Exception):
    """Raised inside rank 0's answering: these (rank, described error) failures, as they are
    (a ``combine`` that failed on a domain's leader names the leader, not rank 0)."""

    def __init__(self, failed: list):
        super().__init__(failed)
        self.failed = failed


def failed_reply(failed: list) -> bytes:
    """The reply every rank gets when ``failed`` ([(rank, described error)]) is not empty."""
    return json.dumps({"errors": sorted([list(f) for f in failed])}).encode("utf-8")


class Comm:
    rank: int = 0
    size: int = 1
    kind: str = "single"

    def __init__(self) -> None:
        # Payload bytes this rank sent and received in collectives, the messages it received,
        # the collectives, and on rank 0 the CPU seconds spent coordinating them (receiving,
        # parsing, answering, sending): what the scale benchmarks report; never used for
        # decisions.
        self.traffic = {"sent": 0, "received": 0, "messages_received": 0, "collectives": 0,
                        "root_cpu": 0.0}
        self._domains: tuple[int, ...] | None = None  # as set_domains had them; None: never
        self._groups: list[list[int]] | None = None
        self._default = None  # the one domain of every rank, made once

    # ---- domains -----------------------------------------------------------------------

    def set_domains(self, domains) -> None:
        """Rank r belongs to domain ``domains[r]`` (numbered 0..D-1 in order of first
        appearance: ``Topology.domains``); a domain's lowest rank leads it. Local, not
        collective: every rank calls it with the same tuple before its next collective."""
        try:
            domains = tuple(operator.index(d) for d in domains)
        except TypeError as e:
            raise ConfigurationError(f"set_domains: domains must be a sequence of integers, "
                                     f"one per rank ({e})") from None
        if len(domains) != self.size:
            raise ConfigurationError(f"set_domains: {len(domains)} domains given for "
                                     f"{self.size} ranks (one per rank)")
        count = 0
        for r, d in enumerate(domains):
            if d < 0 or d > count:
                raise ConfigurationError(
                    f"set_domains: rank {r}'s domain is {d!r}; domains must be numbered "
                    f"0, 1, ... in order of their first rank (the next new one is {count})")
            count += d == count
        groups: list[list[int]] = [[] for _ in range(count)]
        for r, d in enumerate(domains):
            groups[d].append(r)
        self._domains, self._groups = domains, groups
        # Domains of consecutive ranks (the usual block placement): the domains' values
        # joined in domain order are in rank order already.
        self._consecutive = all(a <= b for a, b in zip(domains, domains[1:]))

    def _in_rank_order(self) -> bool:
        """Whether the domains, in order, hold ranks 0, 1, ... consecutively."""
        return self._domains is None or self._consecutive

    def _layout(self) -> tuple[tuple[int, ...], list[list[int]]]:
        if self._domains is not None:
            return self._domains, self._groups
        if self._default is None or len(self._default[0]) != self.size:
            self._default = ((0,) * self.size, [list(range(self.size))])
        return self._default

    @property
    def domains(self) -> tuple[int, ...]:
        """Rank -> its domain (one domain of every rank when ``set_domains`` was not called)."""
        return self._layout()[0]

    def _domain_groups(self) -> list[list[int]]:
        """Domain -> its ranks, ascending (the first leads)."""
        return self._layout()[1]

    # ---- the primitive -------------------------------------------------------------------

    def collect(self, value, *, what: str, timeout: float, answer, combine=None):
        """Every rank sends ``value``; rank 0 calls ``answer(values)`` (every rank's, in rank
        order) which returns a Broadcast or a Scatter; every rank gets its reply. Returns
        ``(values, reply)`` on rank 0 and ``(None, reply)`` elsewhere. An exception in
        ``answer`` reaches every rank as a CheckpointError.

        With ``combine``: each domain's leader calls ``combine(ranks, values)`` on its
        members' values (ranks ascending, leader first) and rank 0's ``answer`` gets the
        combined values, one per domain in domain order; it returns Broadcast(v) or
        Scatter(one value per domain: every rank of domain d gets ``values[d]``; no shared
        document). Returns ``(combined values, reply)`` on rank 0. An exception in
        ``combine`` reaches every rank as a CheckpointError naming that leader."""
        if combine is None:
            return self._flat(value, what=what, timeout=timeout, answer=answer)
        return self._emulated(value, what=what, timeout=timeout, answer=answer,
                              combine=combine)

    def _flat(self, value, *, what: str, timeout: float, answer):
        """The channel's own gather-and-answer over every rank (``collect`` without
        ``combine``)."""
        raise NotImplementedError

    def _emulated(self, value, *, what: str, timeout: float, answer, combine):
        """``collect`` with ``combine`` on a flat channel: rank 0 groups the gathered values by
        domain and combines each as its leader would (its result travels as JSON, as it
        would from a leader), answers, and spreads a per-domain Scatter to the ranks."""
        groups, domains = self._domain_groups(), self.domains
        box = {}

        def flat_answer(values):
            combined, failed = [], []
            for ranks in groups:
                try:
                    out = combine(list(ranks), [values[r] for r in ranks])
                    combined.append(json.loads(json.dumps(out)))
                except Exception as e:  # noqa: BLE001 - every rank must learn it
                    failed.append((ranks[0], describe_error(e)))
            if failed:
                raise _Failed(failed)
            box["combined"] = combined
            out = answer(combined)
            if isinstance(out, Scatter):
                _check_domain_scatter(out, len(groups))
                return Scatter([out.values[d] for d in domains])
            return out
        _, reply = self._flat(value, what=what, timeout=timeout, answer=flat_answer)
        return box.get("combined") if self.rank == 0 else None, reply

    # ---- built on it -----------------------------------------------------------------

    def allgather_json(self, value, *, what: str, timeout: float):
        """Every rank's value, on every rank (O(ranks) bytes per rank: startup only)."""
        return self.collect(value, what=what, timeout=timeout, answer=Broadcast)[1]

    def scatter_json(self, values, *, what: str, timeout: float):
        """Rank 0 hands ``values[r]`` to rank r (``values`` is ignored elsewhere)."""
        return self.collect(None, what=what, timeout=timeout,
                            answer=lambda _: Scatter(values))[1]

    def bcast_json(self, value, *, what: str, timeout: float):
        """Rank 0's ``value``, on every rank."""
        return self.collect(None, what=what, timeout=timeout,
                            answer=lambda _: Broadcast(value))[1]

    def agree(self, error: BaseException | None, *, what: str, timeout: float,
              value=None, collect: str = "all") -> list | None:
        """Gather (ok, value) from every rank; raise the same error everywhere on a failure.

        Returns every rank's ``value`` when all succeeded: on every rank (``collect="all"``,
        O(ranks) bytes per rank), or on rank 0 only (``collect="root"``: None elsewhere;
        every other rank receives only the verdict).
        """
        if collect not in ("all", "root"):
            raise ValueError(f"collect must be 'all' or 'root', not {collect!r}")
        mine = {"ok": error is None, "value": value if error is None else None}
        if error is not None:
            mine["error"] = describe_error(error)
        kept: dict = {}
        _, outcome = self.collect(mine, what=what, timeout=timeout,
                                  answer=self.verdict(collect, kept), combine=condense_outcomes)
        if isinstance(outcome, dict) and "failed" in outcome:
            exc = _rebuild(what, [tuple(f) for f in outcome["failed"]])
            if error is not None:
                raise exc from error
            raise exc
        if collect == "all":
            return outcome
        return kept.get("values") if self.rank == 0 else None

    def verdict(self, collect: str, kept: dict):
        """Rank 0's answer to ``agree`` from the domains' ``condense_outcomes``: the failures,
        or every rank's value (``collect="all"``: to every rank; "root": kept in
        ``kept["values"]``, the ranks get None)."""
        def run(combined):
            failed, values = self.expand_outcomes(combined)
            if failed:
                return Broadcast({"failed": failed})
            kept["values"] = values
            return Broadcast(values if collect == "all" else None)
        return run

    def expand_outcomes(self, combined: list) -> tuple[list, list | None]:
        """Rank 0: the failures ``(rank, error)`` of the domains' ``condense_outcomes``, or
        every rank's value in rank order. Per-rank work only in C (list joins) when the
        domains hold consecutive ranks."""
        failed = sorted(tuple(f) for c in combined for f in c.get("failed", ()))
        if failed:
            return failed, None
        if all("none" in c for c in combined):
            return [], [None] * self.size
        parts = [c["values"] if "values" in c else [None] * c["none"] for c in combined]
        if self._in_rank_order():
            return [], list(itertools.chain.from_iterable(parts))
        values: list = [None] * self.size
        for ranks, part in zip(self._domain_groups(), parts):
            for r, v in zip(ranks, part):
                values[r] = v
        return [], values

    # ---- rank 0's answering ------------------------------------------------------------

    def _encode(self, answer, values, count: int, *, combined: bool = False) -> _Replies:
        """Rank 0: ``answer(values)`` encoded for its ``count`` recipients (ranks; domains in
        combine mode); an exception becomes the error reply for all. Each distinct reply
        object is encoded once; a reply followed by the shared document says so (``"s"``:
        its key)."""
        try:
            out = answer(values)
            if isinstance(out, Scatter):
                if combined:
                    _check_domain_scatter(out, count)
                elif len(out.values) != count:
                    raise CheckpointError(f"{len(out.values)} answers for {count} ranks")
                shared = None if not out.shared_to else json.dumps(out.shared).encode("utf-8")
                encoded: dict[int, bytes] = {}  # one value object for many ranks: once

                def reply_of(r, v):
                    if r in out.shared_to:
                        return json.dumps({"v": v, "s": out.shared_key}).encode("utf-8")
                    if id(v) not in encoded:
                        encoded[id(v)] = json.dumps({"v": v}).encode("utf-8")
                    return encoded[id(v)]
                return _Replies(each=[reply_of(r, v) for r, v in enumerate(out.values)],
                                shared=shared, shared_to=out.shared_to)
            if not isinstance(out, Broadcast):
                raise CheckpointError(f"the coordinator's answer is a {type(out).__name__}, "
                                      "not a Broadcast or a Scatter")
            return _Replies(one=json.dumps({"v": out.value}).encode("utf-8"))
        except _Failed as e:
            return _Replies(one=failed_reply(e.failed))
        except Exception as e:  # noqa: BLE001 - every rank must learn it
            return _Replies(one=failed_reply([(0, describe_error(e))]))

    def _answer(self, answer, values) -> tuple[list[bytes], bytes | None, frozenset]:
        """Rank 0: the reply bytes for every rank, the encoded shared document of a Scatter
        (None: none) and the ranks it goes to (``_encode`` as a list per rank)."""
        out = self._encode(answer, values, self.size)
        each = out.each if out.each is not None else [out.one] * self.size
        return each, out.shared, out.shared_to

    @staticmethod
    def _unwrap(reply: dict, what: str, shared: bytes | None = None):
        if "errors" in reply:
            raise _rebuild(what, [tuple(f) for f in reply["errors"]])
        if "s" in reply:
            reply["v"][reply["s"]] = json.loads(shared)
        return reply["v"]

    # ---- the rest --------------------------------------------------------------------

    # Point-to-point sends and receives give up after ``point_timeout`` seconds (the
    # Checkpointer sets it from Options.timeout; None: they wait for ever). A partner that
    # hangs (a stuck read, a stopped process) then surfaces as a CollectiveTimeoutError
    # naming it, instead of blocking a restore's exchange, a drain or a replication for ever.
    point_timeout: float | None = None

    def send_bytes(self, dest: int, data: bytes) -> None:
        """Point-to-point, blocking: ``data`` to rank ``dest`` (matched by ``recv_bytes``);
        CollectiveTimeoutError (``point_timed_out``) when ``dest`` does not take it within
        ``point_timeout``."""
        raise CheckpointError(f"{self.kind} communicator cannot send point-to-point")

    def recv_bytes(self, source: int) -> bytes:
        raise CheckpointError(f"{self.kind} communicator cannot receive point-to-point")

    def threads_ok(self) -> bool:
        """Whether collectives may run on a background thread while the caller's thread
        runs others (on another channel)."""
        return True

    def allreduce_max(self, values: list[int], *, what: str, timeout: float) -> list[int]:
        """The element-wise maximum of every rank's ``values`` (a few int64), on every rank:
        one native collective, O(log ranks), for calls made every training step
        (``Checkpointer.due``), where the relay of ``collect`` (JSON, rank 0 answering)
        would cost milliseconds. CollectiveTimeoutError naming ``what`` when some rank does
        not join within ``timeout`` seconds."""
        return [int(v) for v in values]

    def alltoall_flags(self, flags: list[int], *, what: str, timeout: float) -> list[int]:
        """``flags[r]``: a small int this rank tells rank r (0: nothing); returns what each
        rank told this one (e.g. who requests pieces from whom in a peer restore). Here
        through rank 0, which handles every nonzero flag (O(pairs)); MPI overrides it with
        one native all-to-all, so no rank handles more than O(ranks)."""
        sparse = [[r, int(v)] for r, v in enumerate(flags) if v]

        def answer(values):
            out: list[list] = [[] for _ in values]
            for sender, told in enumerate(values):
                for r, v in told:
                    out[r].append([sender, v])
            return Scatter(out)
        _, reply = self.collect(sparse, what=what, timeout=timeout, answer=answer)
        got = [0] * len(flags)
        for sender, v in reply:
            got[sender] = int(v)
        return got

    def duplicate(self) -> "Comm":
        """An independent channel over the same ranks (collective), so that a background
        thread's collectives never interleave with the foreground's. It keeps the domains."""
        return self


def point_timed_out(verb: str, peer: int, seconds: float) -> CollectiveTimeoutError:
    """The error of a point-to-point wait that ran out (``verb``: "sending to",
    "receiving from")."""
    return CollectiveTimeoutError(
        f"{verb} rank {peer}: nothing moved within {seconds:g} s (that rank hangs, failed "
        "without telling, or does not make the same transfer); this channel cannot be "
        "trusted any more: end the job (the limit is timeout= / TIERPOINT_TIMEOUT)")


def _check_domain_scatter(out: Scatter, domains: int) -> None:
    if out.shared_to:
        raise CheckpointError("a Scatter answering combined values cannot carry a shared "
                              "document (every rank of a domain gets its domain's value)")
    if len(out.values) != domains:
        raise CheckpointError(f"{len(out.values)} answers for {domains} domains "
                              "(combine: one per domain)")


def condense_outcomes(ranks: list[int], outcomes: list[dict]) -> dict:
    """A domain leader's condensation of its ranks' outcomes (``{"ok", "value"}`` or
    ``{"ok": False, "error"}``): ``{"failed": [[rank, error], ...]}``, or their values
    (``{"none": count}`` when every value is None, the usual case). ``expand_outcomes``
    undoes it on rank 0."""
    failed = [(r, o["error"]) for r, o in zip(ranks, outcomes) if not o["ok"]]
    if failed:
        return {"failed": failed}
    values = [o.get("value") for o in outcomes]
    if all(v is None for v in values):
        return {"none": len(values)}
    return {"values": values}


def describe_error(error: BaseException) -> dict:
    """An error as JSON (class name and message), to be rebuilt by ``error_class``."""
    if isinstance(error, CheckpointError):
        cls = type(error).__name__
        message = str(error)
    else:
        cls = "RankFailedError"
        message = f"{type(error).__name__}: {error}"
        if debug():
            message += "\n" + "".join(traceback.format_exception(error))
    return {"class": cls, "message": message}


def _rebuild(what: str, failed: list[tuple[int, dict]]) -> CheckpointError:
    """The same exception on every rank, from the gathered failures (first rank's class)."""
    rank, first = failed[0]
    text = f"{what} failed on rank {rank}: {first['message']}"
    if len(failed) > 1:
        others = ", ".join(str(r) for r, _ in failed[1:])
        text += f" (ranks {others} failed too)"
    return error_class(first["class"])(text)


class SingleComm(Comm):
    kind = "single"

    def _flat(self, value, *, what: str, timeout: float, answer):
        values = [json.loads(json.dumps(value))]  # as a real channel would: a JSON copy
        replies, shared, _ = self._answer(answer, values)
        return values, self._unwrap(json.loads(replies[0]), what, shared)


def _parse_all(messages: list[bytes], parsed: dict | None = None) -> list:
    """Every rank's value, parsing each distinct message once: in most phases nearly every
    rank sends the same bytes (an outcome with no value). Equal messages give the same value
    object: answers read the values they are given and never change them.
    ``parsed`` (message -> value) may be shared between calls."""
    parsed = {} if parsed is None else parsed
    out = []
    for m in messages:
        v = parsed.get(m)
        if v is None:
            v = parsed[m] = json.loads(m)
        out.append(v)
    return out


def _inlined(reply: bytes, shared: bytes) -> bytes:
    """A reply with the shared document put in its place (for channels without the second
    message)."""
    d = json.loads(reply)
    if "s" in d:
        d["v"][d.pop("s")] = json.loads(shared)
    return json.dumps(d).encode("utf-8")


class _Backoff:
    """Polling pause for deadline-bounded waits: starts at 50 us, grows to ``most`` (5 ms)."""

    def __init__(self, most: float = 5e-3):
        self.delay, self.most = 5e-5, most

    def reset(self):
        self.delay = 5e-5

    def wait(self):
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, self.most)


def ranks_text(ranks: list[int]) -> str:
    """Ascending ranks as runs: ``4-7``, ``1, 3, 5-6``."""
    runs, start = [], None
    for i, r in enumerate(ranks):
        if start is None:
            start = r
        if i + 1 == len(ranks) or ranks[i + 1] != r + 1:
            runs.append(str(start) if start == r else f"{start}-{r}")
            start = None
    return ", ".join(runs)
