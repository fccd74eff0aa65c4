"""coop.receiver: reads land in one reused buffer, yet each protocol's bytes stay its own."""

import asyncio
import socket

from coop.receiver import RECEIVE_SIZE, Receiver


class Keeper(Receiver):
    def __init__(self):
        self.kept: list[bytes] = []
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.kept.append(data)  # kept beyond the call, as parsers do with partial frames

    def eof_received(self):
        self.done.set_result(None)


async def _two_connections_interleaved():
    loop = asyncio.get_running_loop()
    pairs = [socket.socketpair() for _ in range(2)]
    keepers = []
    for ours, theirs in pairs:
        theirs.setblocking(False)  # sent from this loop, which must go on reading meanwhile
        keeper = Keeper()
        await loop.connect_accepted_socket(lambda k=keeper: k, ours)
        keepers.append(keeper)
    sent = [[], []]
    for i in range(50):  # reads alternate between the two sockets, each overwriting the buffer
        for n, (_ours, theirs) in enumerate(pairs):
            piece = bytes([65 + n]) * (1 + i * 37 % 3000) + str(i).encode()
            await loop.sock_sendall(theirs, piece)
            sent[n].append(piece)
            await asyncio.sleep(0)
    big = b"z" * (RECEIVE_SIZE * 3 + 5)  # more than one read's worth
    await loop.sock_sendall(pairs[0][1], big)
    sent[0].append(big)
    for _ours, theirs in pairs:
        theirs.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(asyncio.gather(*(k.done for k in keepers)), 10)
    for _ours, theirs in pairs:
        theirs.close()
    return keepers, sent


def test_bytes_received_stay_intact_while_the_buffer_is_reused():
    keepers, sent = asyncio.run(_two_connections_interleaved())
    for keeper, pieces in zip(keepers, sent):
        assert b"".join(keeper.kept) == b"".join(pieces)
        assert all(type(chunk) is bytes for chunk in keeper.kept)
    assert max(len(c) for c in keepers[0].kept) <= RECEIVE_SIZE
