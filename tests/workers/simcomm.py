"""A flat channel of several ranks simulated in one process (rank ``rank``'s view of a
collective in which rank r contributed ``everyone[r]``): runs the base class's combine
emulation, the one SingleComm and TorchComm use, without a launcher."""
import json

from tierpoint.runtime.channel import Comm


class Simulated(Comm):
    kind = "simulated"

    def __init__(self, size: int, rank: int, everyone: list, domains=None):
        super().__init__()
        self.size, self.rank, self.everyone = size, rank, everyone
        if domains is not None:
            self.set_domains(domains)

    def _flat(self, value, *, what: str, timeout: float, answer):
        assert json.dumps(value) == json.dumps(self.everyone[self.rank])
        values = [json.loads(json.dumps(v)) for v in self.everyone]  # as sent: JSON copies
        replies, shared, _ = self._answer(answer, values)
        return (values if self.rank == 0 else None,
                self._unwrap(json.loads(replies[self.rank]), what, shared))
