#!/usr/bin/env python3
"""Sensor fusion: complementary filter of /wheel_odom position and /imu yaw, published as
/fused_pose (geometry_msgs/PoseStamped) at --rate Hz (default 50) once both inputs arrived."""
import argparse
import signal
import sys

import rclpy
from rclpy.node import Node
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import Imu


class Fusion(Node):
    def __init__(self, rate, name):
        super().__init__(name)
        self.imu = None
        self.odom = None
        self.create_subscription(Imu, "/imu", self.on_imu, 10)
        self.create_subscription(Odometry, "/wheel_odom", self.on_odom, 10)
        self.pub = self.create_publisher(PoseStamped, "/fused_pose", 10)
        self.create_timer(1.0 / rate, self.tick)
        self.alpha = 0.98

    def on_imu(self, m):
        self.imu = m

    def on_odom(self, m):
        self.odom = m

    def tick(self):
        if self.imu is None or self.odom is None:
            return
        out = PoseStamped()
        out.header.stamp = self.get_clock().now().to_msg()
        out.header.frame_id = "map"
        out.pose.position = self.odom.pose.pose.position
        q_imu, q_odom = self.imu.orientation, self.odom.pose.pose.orientation
        a = self.alpha
        out.pose.orientation.z = a * q_imu.z + (1 - a) * q_odom.z
        out.pose.orientation.w = a * q_imu.w + (1 - a) * q_odom.w
        self.pub.publish(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--name", default="fusion", help="node name")
    a = p.parse_args()
    rclpy.init(signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = Fusion(a.rate, a.name)
    stop = []
    signal.signal(signal.SIGINT, lambda s, _f: stop.append(signal.Signals(s).name))
    signal.signal(signal.SIGTERM, lambda s, _f: stop.append(signal.Signals(s).name))
    while rclpy.ok() and not stop:
        rclpy.spin_once(node, timeout_sec=0.05)
    if stop:
        print(f"{node.get_name()}: stopping on {stop[0]}", file=sys.stderr, flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
