#!/usr/bin/env python3
"""Navigation: a managed (lifecycle) node. While active it follows /fused_pose, publishes
/cmd_vel (geometry_msgs/Twist) at 20 Hz and its health on /diagnostics at 2 Hz.

--diag-level ok|warn|error  level it reports (error simulates a planner failure)
--autostart                 configure and activate itself (as if no lifecycle manager)
--self-configure            configure itself and stay inactive (an activation that never came)
"""
import argparse
import signal
import sys

import rclpy
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import TransitionCallbackReturn
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, Twist

LEVELS = {"ok": DiagnosticStatus.OK, "warn": DiagnosticStatus.WARN, "error": DiagnosticStatus.ERROR}


class Navigation(LifecycleNode):
    def __init__(self, level, name):
        super().__init__(name)
        self.level = level
        self.pose = None
        self._nav_timers = []
        self.cmd = None
        self.diag = None
        self.sub = None

    def on_configure(self, state):
        self.cmd = self.create_publisher(Twist, "/cmd_vel", 10)
        self.diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.sub = self.create_subscription(PoseStamped, "/fused_pose", self.on_pose, 10)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state):
        self._nav_timers = [self.create_timer(0.05, self.drive), self.create_timer(0.5, self.report)]
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state):
        for t in self._nav_timers:
            self.destroy_timer(t)
        self._nav_timers = []
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state):
        self.destroy_publisher(self.cmd)
        self.destroy_publisher(self.diag)
        self.destroy_subscription(self.sub)
        return TransitionCallbackReturn.SUCCESS

    def on_pose(self, m):
        self.pose = m

    def drive(self):
        t = Twist()
        if self.pose is not None:
            t.linear.x = 0.5
            t.angular.z = 0.1
        self.cmd.publish(t)

    def report(self):
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        st = DiagnosticStatus()
        st.name = "navigation: planner"
        st.hardware_id = "nav"
        st.level = LEVELS[self.level]
        st.message = {"ok": "following path", "warn": "path blocked, replanning", "error": "no valid path"}[self.level]
        st.values = [KeyValue(key="has_pose", value=str(self.pose is not None))]
        arr.status = [st]
        self.diag.publish(arr)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--diag-level", choices=sorted(LEVELS), default="ok")
    p.add_argument("--autostart", action="store_true")
    p.add_argument("--self-configure", action="store_true", help="configure only: stay inactive")
    p.add_argument("--name", default="navigation", help="node name")
    a = p.parse_args()
    rclpy.init(signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = Navigation(a.diag_level, a.name)
    if a.autostart or a.self_configure:
        node.trigger_configure()
    if a.autostart:
        node.trigger_activate()
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
