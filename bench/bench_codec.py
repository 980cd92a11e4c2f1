"""Codec micro-benchmark: gateway.smpp.pdu against smpplib 2.2.4, one core, no I/O.

Run: ``python -m bench.bench_codec`` (or ``python bench/bench_codec.py``) from the repo root.
Options: ``--repeat N`` (runs per case, default 7), ``--seconds S`` (target time per run, default 0.2).

What is timed, for both codecs alike:
- encode: a PDU object built once, turned into bytes on every iteration (smpplib: ``generate()``);
- decode: the same bytes turned into a PDU object on every iteration (smpplib: ``parse_pdu``).
The PDUs are the gateway's real traffic: a 2-part-style submit_sm with UDH, registered_delivery and
SAR TLVs; its submit_sm_resp; a delivery receipt deliver_sm (text form + receipted_message_id,
message_state, network_error_code TLVs); its deliver_sm_resp. Figures are medians over the runs; ours and
smpplib run alternately and the ratio is the median of the per-run ratios (steadier on a busy box).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any
from pathlib import Path

if __package__ in (None, ""):  # `python bench/bench_codec.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import smpplib.client  # type: ignore[import-untyped]
import smpplib.smpp  # type: ignore[import-untyped]

from gateway.smpp import pdu as P

RECEIPT_TEXT = (
    b"id:0123456789abcdef sub:001 dlvrd:001 submit date:2611231000 done date:2611231000 stat:DELIVRD err:000 text:"
)
UDH_TEXT = b"\x05\x00\x03\x2a\x02\x01" + "您的验证码是 123456，5 分钟内有效。".encode("utf-16-be")


def _smpplib_client() -> smpplib.client.Client:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return smpplib.client.Client("127.0.0.1", 2775, allow_unknown_opt_params=True)


def cases() -> list[tuple[str, P.Pdu, Callable[[], Any]]]:
    """(name, our Pdu, factory of the equivalent smpplib PDU)."""
    client = _smpplib_client()

    def lib(name: str, seq: int, **kw: object) -> Callable[[], Any]:
        def make() -> Any:
            p = smpplib.smpp.make_pdu(name, client=client, **kw)
            p.sequence = seq
            return p

        return make

    sm_fields: dict[str, object] = dict(
        source_addr_ton=5, source_addr_npi=0, source_addr="Brand", dest_addr_ton=1, dest_addr_npi=1,
        destination_addr="8613800138000", esm_class=0x40, registered_delivery=1, data_coding=8,
    )
    ours_submit = P.submit_sm(
        7, "8613800138000", UDH_TEXT, source_addr="Brand", source_addr_ton=5, dest_addr_ton=1, dest_addr_npi=1,
        esm_class=0x40, registered_delivery=1, data_coding=8,
        tlvs={"sar_msg_ref_num": 42, "sar_total_segments": 2, "sar_segment_seqnum": 1},
    )
    lib_submit = lib("submit_sm", 7, short_message=UDH_TEXT, sar_msg_ref_num=42, sar_total_segments=2,
                     sar_segment_seqnum=1, **sm_fields)

    ours_resp = P.submit_sm_resp(7, "0123456789abcdef")
    lib_resp = lib("submit_sm_resp", 7, message_id="0123456789abcdef")

    ours_dlr = P.deliver_sm(
        9, "8613800138000", "Brand", RECEIPT_TEXT, source_addr_ton=1, source_addr_npi=1, dest_addr_ton=5,
        esm_class=0x04,
        tlvs={"network_error_code": b"\x03\x00\x00", "message_state": 2, "receipted_message_id": "0123456789abcdef"},
    )
    lib_dlr = lib("deliver_sm", 9, source_addr_ton=1, source_addr_npi=1, source_addr="8613800138000",
                  dest_addr_ton=5, destination_addr="Brand", esm_class=0x04, short_message=RECEIPT_TEXT,
                  network_error_code=b"\x03\x00\x00", message_state=2, receipted_message_id="0123456789abcdef")

    ours_dresp = P.deliver_sm_resp(9)
    lib_dresp = lib("deliver_sm_resp", 9)
    return [
        ("submit_sm", ours_submit, lib_submit),
        ("submit_sm_resp", ours_resp, lib_resp),
        ("deliver_sm (receipt)", ours_dlr, lib_dlr),
        ("deliver_sm_resp", ours_dresp, lib_dresp),
    ]


def _calibrate(fn: Callable[[], object], seconds: float) -> int:
    """Iterations of ``fn`` that take about ``seconds``."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt > seconds / 4:
            return max(1, int(n * seconds / dt))
        n *= 4


def _run(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t0)


def paired_rates(
    ours: Callable[[], object], theirs: Callable[[], object] | None, seconds: float, repeat: int
) -> tuple[float, float, float]:
    """Median ops/s of each, and the median of the per-run ratios.

    The two are run alternately, so that whatever else the machine is doing hits both alike: the
    ratio is steadier than either absolute figure on a shared box.
    """
    n_ours = _calibrate(ours, seconds)
    n_theirs = _calibrate(theirs, seconds) if theirs is not None else 0
    r_ours: list[float] = []
    r_theirs: list[float] = []
    for _ in range(repeat):
        r_ours.append(_run(ours, n_ours))
        if theirs is not None:
            r_theirs.append(_run(theirs, n_theirs))
    if theirs is None:
        return statistics.median(r_ours), 0.0, 0.0
    ratio = statistics.median(a / b for a, b in zip(r_ours, r_theirs))
    return statistics.median(r_ours), statistics.median(r_theirs), ratio


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.2)
    args = ap.parse_args(argv)
    client = _smpplib_client()

    print(f"python {sys.version.split()[0]}, smpplib 2.2.4, median of {args.repeat} runs x ~{args.seconds}s")
    print(f"{'operation':<32}{'ours ops/s':>14}{'smpplib ops/s':>16}{'ours µs':>10}{'ratio':>9}")
    for name, ours, make_lib in cases():
        lib_pdu = make_lib()
        data = P.encode(ours)
        lib_data = lib_pdu.generate()
        if data != lib_data:  # same wire bytes, or the comparison is meaningless
            raise SystemExit(f"{name}: our bytes differ from smpplib's:\n{data.hex()}\n{lib_data.hex()}")
        encode, decode, parse_pdu = P.encode, P.decode, smpplib.smpp.parse_pdu
        for op, ours_fn, lib_fn in (
            ("encode", lambda: encode(ours), lambda: lib_pdu.generate()),
            ("decode", lambda: decode(data),
             lambda: parse_pdu(data, client=client, allow_unknown_opt_params=True)),
        ):
            r_ours, r_lib, ratio = paired_rates(ours_fn, lib_fn, args.seconds, args.repeat)
            print(f"{op + ' ' + name:<32}{r_ours:>14,.0f}{r_lib:>16,.0f}{1e6 / r_ours:>10.2f}{ratio:>8.1f}x")
    # The byte-level fast paths the simulator and the receipt path use.
    for op, fn in (
        ("encode_submit_sm_resp (bytes)", lambda: P.encode_submit_sm_resp(7, "0123456789abcdef")),
        ("encode_deliver_sm_resp (bytes)", lambda: P.encode_deliver_sm_resp(9)),
    ):
        r, _, _ = paired_rates(fn, None, args.seconds, args.repeat)
        print(f"{op:<32}{r:>14,.0f}{'':>16}{1e6 / r:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
