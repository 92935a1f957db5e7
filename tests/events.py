"""Reads TensorBoard event files (the TFRecord framing: length, crc, payload, crc) without TensorFlow."""

import struct


def read_events(logdir):
    """Every Event proto in every events file under ``logdir``."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            events.append(event_pb2.Event.FromString(data[i + 12 : i + 12 + length]))
            i += 12 + length + 4
    return events
