"""The job's topology, computed once from the ranks' startup records (pure)."""
from tierpoint.runtime.topology import Topology


def infos(nodes):
    return [{"rank": r, "node": n, "host": f"h-{n}", "pid": 100 + r, "tier_dir": f"/ssd/{n}"}
            for r, n in enumerate(nodes)]


def test_domains_leaders_and_aggregators_of_two_nodes_with_two_ranks_each():
    topo = Topology.from_startup(3, infos(["a", "a", "b", "b"]))
    assert topo.domains == (0, 0, 1, 1) and topo.leaders == (0, 2)
    assert topo.world_size == 4 and topo.domain == 1 and not topo.is_leader
    assert topo.domain_ranks() == [2, 3] and topo.ranks_on_node() == 2
    assert [topo.reader_of_rank(r) for r in range(4)] == [0, 0, 2, 2]
    assert topo.aggregator_index(0) == 0 and topo.aggregator_index(2) == 1
    assert topo.aggregator_index(1) is None and topo.readers_of(0) == []
    # The manifest's layout.ranks records keep their fields and order.
    assert list(topo.rank_records()[2]) == ["rank", "node", "host", "pid", "tier_dir", "domain"]
    assert topo.rank_records()[2]["domain"] == 1


def test_one_aggregator_serves_every_domain():
    topo = Topology.from_startup(0, infos(["a", "b", "c"]), aggregators=1)
    assert topo.aggregator_count == 1 and topo.is_leader
    assert [topo.aggregator_of_reader(r) for r in topo.leaders] == [0, 0, 0]
    assert topo.readers_of(0) == [1, 2] and topo.aggregator_index(1) is None


def test_ranks_sharing_a_node_but_not_a_local_root_are_two_domains():
    records = infos(["a", "a"])
    records[1]["tier_dir"] = "/other"
    topo = Topology.from_startup(1, records)
    assert topo.domains == (0, 1) and topo.is_leader and topo.leaders == (0, 1)
