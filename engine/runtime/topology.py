"""The job's topology, computed once at startup: ranks, nodes, node-local directories (domains),
their leaders and the drain's aggregators. A small frozen value every part of the engine is
handed instead of reaching into the Checkpointer.

Terms (one meaning each, docs/architecture.md):
- a *domain* is one node-local tier directory and the ranks that write into it: ranks that
  share a node and a local root share one. Domains are numbered 0..D-1 in order of their first
  rank; the manifest records each saving rank's domain, each directory's commit marker the
  domain it holds (tiers/holdings.py).
- a domain's *leader* is its first rank: it writes the directory's shared files (group
  metadata, manifest, marker), applies the ring there and reads its chunks when draining.
- *aggregators* are the first K leaders (default: every leader); aggregator k writes the
  capacity parts of the domains d with d mod K == k.

Pure: built from the ranks' startup records (one allgather), so every rank computes the same.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RankInfo:
    """What a rank told the others at startup."""

    rank: int
    node: str
    host: str
    pid: int
    tier_dir: str  # the node-local tier root it writes under (messages and grouping only)
    domain: int

    def to_json(self) -> dict:
        return {"rank": self.rank, "node": self.node, "host": self.host, "pid": self.pid,
                "tier_dir": self.tier_dir, "domain": self.domain}


@dataclass(frozen=True)
class Topology:
    rank: int
    ranks: tuple[RankInfo, ...]
    domains: tuple[int, ...]            # rank -> its domain
    leaders: tuple[int, ...]            # domain -> its leader rank
    aggregator_count: int               # K: the first K leaders write the capacity parts

    @classmethod
    def from_startup(cls, rank: int, infos: list[dict], aggregators: int | None = None
                     ) -> "Topology":
        """``infos``: each rank's {"rank", "node", "host", "pid", "tier_dir"}, in rank order
        (the startup allgather); ``aggregators``: K, default one per domain."""
        numbers: dict[tuple, int] = {}
        domains = tuple(numbers.setdefault((i["node"], i["tier_dir"]), len(numbers))
                        for i in infos)
        leaders = tuple(domains.index(d) for d in range(len(numbers)))
        count = len(leaders) if not aggregators else max(1, min(int(aggregators), len(leaders)))
        ranks = tuple(RankInfo(int(i["rank"]), str(i["node"]), str(i["host"]), int(i["pid"]),
                               str(i["tier_dir"]), d) for i, d in zip(infos, domains))
        return cls(rank=rank, ranks=ranks, domains=domains, leaders=leaders,
                   aggregator_count=count)

    # ---- this rank -------------------------------------------------------------------------

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    @property
    def domain(self) -> int:
        return self.domains[self.rank]

    @property
    def is_leader(self) -> bool:
        """Whether this rank leads its domain (writes its directory's shared files)."""
        return self.leaders[self.domain] == self.rank

    @property
    def node(self) -> str:
        return self.ranks[self.rank].node

    def domain_ranks(self, domain: int | None = None) -> list[int]:
        """The ranks of a domain (default: this rank's), ascending; the first leads."""
        d = self.domain if domain is None else domain
        return [r for r, dom in enumerate(self.domains) if dom == d]

    def ranks_on_node(self, node: str | None = None) -> int:
        node = self.node if node is None else node
        return sum(1 for info in self.ranks if info.node == node)

    # ---- the drain's readers and aggregators -----------------------------------------------

    def reader_of_rank(self, rank: int) -> int:
        """The rank that reads, when draining, the directory ``rank`` wrote into."""
        return self.leaders[self.domains[rank]]

    def aggregator_of_reader(self, reader: int) -> int:
        """The aggregator a domain leader sends its chunks to (itself when it is one)."""
        return self.leaders[self.domains[reader] % self.aggregator_count]

    def aggregator_index(self, rank: int) -> int | None:
        """k when ``rank`` is the k-th aggregator, else None."""
        k = self.leaders.index(rank) if rank in self.leaders else None
        return k if k is not None and k < self.aggregator_count else None

    def readers_of(self, aggregator: int) -> list[int]:
        """The leaders (other than itself) whose chunks ``aggregator`` writes."""
        return [r for r in self.leaders
                if self.aggregator_of_reader(r) == aggregator and r != aggregator]

    def rank_records(self) -> list[dict]:
        """The manifest's ``layout.ranks`` records (format unchanged)."""
        return [info.to_json() for info in self.ranks]
