#!/usr/bin/env python3
"""A managed (lifecycle) node that journals what happens to it, for the teardown tests.

Every transition callback and every stop signal appends one line `<name> <event>` to the
journal file (opened in append mode and flushed per line, so several nodes writing to the
same file give one total order). Events: configure, activate, deactivate, cleanup, shutdown,
SIGINT, SIGTERM.

--name NAME       node name
--journal PATH    journal file
"""
import argparse
import signal
import sys

import rclpy
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import TransitionCallbackReturn


class Journaled(LifecycleNode):
    def __init__(self, name, journal):
        super().__init__(name)
        self.journal = journal

    def note(self, event):
        self.journal.write(f"{self.get_name()} {event}\n")
        self.journal.flush()

    def on_configure(self, state):
        self.note("configure")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state):
        self.note("activate")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state):
        self.note("deactivate")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state):
        self.note("cleanup")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state):
        self.note("shutdown")
        return TransitionCallbackReturn.SUCCESS


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--journal", required=True)
    a = p.parse_args()
    journal = open(a.journal, "a", buffering=1)
    rclpy.init(signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = Journaled(a.name, journal)
    stop = []

    def on_signal(sig, _frame):
        name = signal.Signals(sig).name
        node.note(name)
        stop.append(name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while rclpy.ok() and not stop:
        rclpy.spin_once(node, timeout_sec=0.05)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
