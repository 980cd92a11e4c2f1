"""`smsgw send`: publish one submission on MQTT and, with --wait, print its events.

Output (CONTRACT.md): the id on the first line, then one line per event starting with its status
(followed by the event as JSON). Exit 0 when delivered; 1 on another final status or a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid

import aiomqtt
import orjson

from gateway.config import ConfigError, load_config
from gateway.model import FINAL_STATUSES, Status
from gateway.daemon import mqtt_settings
from gateway.queue.mqtt import MqttSettings
from gateway.smpp.text import TextRejected, describe


def _submission(args: argparse.Namespace, msg_id: str) -> dict[str, object]:
    doc: dict[str, object] = {"id": msg_id, "to": args.to, "text": args.text,
                              "priority": args.priority or "transactional"}
    if args.sender:
        doc["sender"] = args.sender
    if getattr(args, "client", None):
        doc["client"] = args.client
    if getattr(args, "validity_s", None) is not None:
        doc["validity_s"] = args.validity_s
    if getattr(args, "not_before", None):
        doc["not_before"] = args.not_before
    return doc


async def _send(args: argparse.Namespace, settings: MqttSettings, msg_id: str) -> int:
    payload = orjson.dumps(_submission(args, msg_id))
    wait = float(args.wait or 0)
    async with aiomqtt.Client(settings.host, settings.port,
                              identifier=f"smsgw-send-{uuid.uuid4().hex[:12]}",
                              username=settings.username, password=settings.password,
                              tls_context=settings.tls_context) as client:
        if wait > 0:
            await client.subscribe(settings.topic("events", msg_id), qos=1)
        await client.publish(settings.topic("submit"), payload, qos=1)
        print(msg_id, flush=True)
        if wait <= 0:
            return 0
        try:
            async with asyncio.timeout(wait):
                async for message in client.messages:
                    try:
                        event = orjson.loads(message.payload)
                    except orjson.JSONDecodeError:
                        continue
                    status = str(event.get("status", ""))
                    print(f"{status} {orjson.dumps(event).decode()}", flush=True)
                    if status in {s.value for s in FINAL_STATUSES}:
                        return 0 if status == Status.DELIVERED.value else 1
        except TimeoutError:
            print(f"timeout: no final status within {wait:g}s", file=sys.stderr)
            return 1
    return 1


def main(args: argparse.Namespace) -> int:
    msg_id = args.id or uuid.uuid4().hex
    if getattr(args, "dry_run", False):
        try:
            info = describe(args.text)
        except TextRejected as exc:
            print(f"rejected {exc.reason}: {exc.detail}")
            return 1
        print(f"{msg_id} encoding={info.encoding} data_coding={info.data_coding} "
              f"parts={info.parts} units={info.units}")
        return 0
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    settings = mqtt_settings(cfg)
    try:
        return asyncio.run(_send(args, settings, msg_id))
    except aiomqtt.MqttError as exc:
        print(f"smsgw send: MQTT broker {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
