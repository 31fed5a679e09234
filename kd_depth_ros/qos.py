"""QoS profiles for the depth nodes and a one-time warning for publishers with incompatible QoS.

Subscribers default to sensor-data QoS (best effort, keep last, small depth) so they hear
best-effort cameras; publishers default to reliable. A reliable subscriber never receives from a
best-effort publisher — the most common silent failure — so :class:`IncompatibleQosWarner` checks
every publisher on the subscribed topics (``get_publishers_info_by_topic`` +
``rclpy.qos.qos_check_compatible``) and logs one clear warning per incompatible publisher, naming
the parameter that fixes it.
"""
from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSCompatibility,
    QoSProfile,
    ReliabilityPolicy,
    qos_check_compatible,
)

RELIABILITY_CHOICES = ("best_effort", "reliable")


def make_qos(reliability: str, depth: int) -> QoSProfile:
    """Keep-last ``depth``, volatile, with ``reliability`` 'best_effort' or 'reliable'."""
    if reliability not in RELIABILITY_CHOICES:
        raise ValueError(f"reliability: expected one of {RELIABILITY_CHOICES}, got {reliability!r}")
    if depth < 1:
        raise ValueError(f"depth: expected a queue depth >= 1, got {depth}")
    policy = ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort" else ReliabilityPolicy.RELIABLE
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth), reliability=policy,
                      durability=DurabilityPolicy.VOLATILE)


def _policy_name(policy) -> str:
    return getattr(policy, "name", str(policy)).lower()


class IncompatibleQosWarner:
    """Warn once per (topic, publisher) when a publisher's QoS cannot reach our subscription.

    ``watch(subscription, qos, fix)`` registers a subscription (``fix`` says which parameter to
    change); ``check()`` — call it from a timer and from the subscription's ``incompatible_qos``
    event — returns the warnings it logged this time.
    """

    def __init__(self, node):
        self._node = node
        self._watched: list[tuple[object, QoSProfile, str]] = []
        self._warned: set[tuple[str, bytes]] = set()

    def watch(self, subscription, qos: QoSProfile, fix: str) -> None:
        self._watched.append((subscription, qos, fix))

    def clear(self) -> None:
        self._watched.clear()

    def check(self) -> list[str]:
        messages = []
        for subscription, qos, fix in list(self._watched):
            topic = subscription.topic_name  # resolved and remapped
            for info in self._node.get_publishers_info_by_topic(topic):
                key = (topic, bytes(info.endpoint_gid))
                if key in self._warned:
                    continue
                compatibility, reason = qos_check_compatible(info.qos_profile, qos)
                if compatibility != QoSCompatibility.ERROR:
                    continue
                self._warned.add(key)
                publisher = f"{info.node_namespace.rstrip('/')}/{info.node_name}"
                message = (f"QoS mismatch on '{topic}': publisher '{publisher}' offers "
                           f"{_policy_name(info.qos_profile.reliability)}/"
                           f"{_policy_name(info.qos_profile.durability)}, this node subscribes "
                           f"{_policy_name(qos.reliability)}/{_policy_name(qos.durability)}; no messages "
                           f"will arrive from it. {fix} ({reason.strip()})")
                self._node.get_logger().warning(message)
                messages.append(message)
        return messages
