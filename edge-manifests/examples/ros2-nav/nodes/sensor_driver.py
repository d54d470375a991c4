#!/usr/bin/env python3
"""Fake sensor driver: IMU on /imu and wheel odometry on /wheel_odom, each at --rate Hz
(default 100). The robot drives a slow circle so fusion has something to fuse."""
import argparse
import math
import signal
import sys

import rclpy
from rclpy.node import Node
from nav_msgs.msg import Odometry
from sensor_msgs.msg import Imu


class SensorDriver(Node):
    def __init__(self, rate, name):
        super().__init__(name)
        self.imu = self.create_publisher(Imu, "/imu", 10)
        self.odom = self.create_publisher(Odometry, "/wheel_odom", 10)
        self.t = 0.0
        self.dt = 1.0 / rate
        self.create_timer(self.dt, self.tick)

    def tick(self):
        self.t += self.dt
        now = self.get_clock().now().to_msg()
        yaw = 0.2 * self.t
        imu = Imu()
        imu.header.stamp = now
        imu.header.frame_id = "imu_link"
        imu.angular_velocity.z = 0.2
        imu.linear_acceleration.x = 0.0
        imu.linear_acceleration.z = 9.81
        imu.orientation.z = math.sin(yaw / 2)
        imu.orientation.w = math.cos(yaw / 2)
        self.imu.publish(imu)
        od = Odometry()
        od.header.stamp = now
        od.header.frame_id = "odom"
        od.child_frame_id = "base_link"
        od.pose.pose.position.x = 5.0 * math.sin(yaw)
        od.pose.pose.position.y = 5.0 * (1 - math.cos(yaw))
        od.twist.twist.linear.x = 1.0
        od.twist.twist.angular.z = 0.2
        self.odom.publish(od)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--name", default="sensor_driver", help="node name")
    a = p.parse_args()
    rclpy.init(signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = SensorDriver(a.rate, a.name)
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
