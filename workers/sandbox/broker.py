"""The sandbox host's Redis transport: kombu's, minus the sweep that needs to read every delivery.

kombu's Redis transport periodically lists the unacked index (ZRANGE) to put back messages whose
consumer vanished. A sandbox host's ACL user may not list it: the index names every in-flight
sandbox message, and with a delivery tag the hash gives the message, run token included. So a
sandbox host only ever touches its own deliveries (by the tag it was given); a message held by a
host that died is not put back by anyone: the job's lease expires, or its dispatch is found
unclaimed, and the reaper dispatches it again with a new task id and token (docs/decisions/0046).
"""

from kombu.transport import redis


class QoS(redis.QoS):
    def restore_visible(self, *args, **kwargs) -> None:
        return None


class Channel(redis.Channel):
    QoS = QoS


class Transport(redis.Transport):
    Channel = Channel
