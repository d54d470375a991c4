#!/usr/bin/env python3
"""Prints the ROS 2 node names visible in the graph (one per line) after --wait seconds."""
import argparse
import time

import rclpy

p = argparse.ArgumentParser()
p.add_argument("--wait", type=float, default=2.0)
a = p.parse_args()
rclpy.init()
n = rclpy.create_node("graph_probe")
end = time.monotonic() + a.wait
while time.monotonic() < end:
    rclpy.spin_once(n, timeout_sec=0.1)
for name, ns in n.get_node_names_and_namespaces():
    if name != "graph_probe":
        print(ns.rstrip("/") + "/" + name)
n.destroy_node()
rclpy.shutdown()
