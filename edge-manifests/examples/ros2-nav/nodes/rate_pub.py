#!/usr/bin/env python3
"""Publishes std_msgs/String on --topic at --rate Hz (benchmarks and tests)."""
import argparse
import signal
import sys
import time

import rclpy
from rclpy.node import Node
from std_msgs.msg import String


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--topic", default="/bench")
    p.add_argument("--rate", type=float, default=1000.0)
    a = p.parse_args()
    rclpy.init(signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = Node("rate_pub")
    pub = node.create_publisher(String, a.topic, 10)
    stop = []
    signal.signal(signal.SIGINT, lambda s, _f: stop.append(signal.Signals(s).name))
    signal.signal(signal.SIGTERM, lambda s, _f: stop.append(signal.Signals(s).name))
    period = 1.0 / a.rate
    nxt = time.monotonic()
    i = 0
    msg = String()
    while not stop:
        i += 1
        msg.data = f"sample {i}"
        pub.publish(msg)
        nxt += period
        d = nxt - time.monotonic()
        if d > 0:
            time.sleep(d)
        elif d < -1.0:
            nxt = time.monotonic()
    if stop:
        print(f"{node.get_name()}: stopping on {stop[0]}", file=sys.stderr, flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
