"""What `linkedout store info` shows: counts, fingerprint(s), failures with reasons, size on disk,
captions.

Built on `FeatureStore.info()`; adds the distinct fingerprints found in the rows themselves (a store
holds one, but rows carry it so that copied rows stay self-describing: listing them checks that),
the unresolved failures with their latest reason, how many items carry a caption (a Video-LLM's
generated text, or the text a caption store encoded) with a few of them, and for a caption store its
source store: still the same extraction, changed since, or missing.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow.compute as pc

from linkedout.store.feature_store import TOKENS, FeatureStore

__all__ = ["describe_source", "describe_store", "format_store_info", "human_bytes"]

CAPTION_SAMPLES = 3


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # unreachable; keeps type checkers calm


def describe_store(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`FeatureStore.info()` plus ``row_fingerprints`` ({fingerprint: rows}) and ``failed``: one entry
    per item that failed and has no tokens, ``{item_id, reason, time, attempts}`` (latest reason)."""
    store = FeatureStore.open(path)
    info = store.info()
    row_fps: dict[str, int] = {}
    if info["rows"]:  # rows > 0: the tokens dataset has a committed version
        import lance

        ds = lance.dataset(str(store.path / TOKENS))
        counts = pc.value_counts(ds.to_table(columns=["fingerprint"]).column("fingerprint"))
        row_fps = {c["values"].as_py(): c["counts"].as_py() for c in counts}
    info["row_fingerprints"] = row_fps
    ids = store.ids()
    captions = [(i, c) for i, c in zip(ids, store.captions(ids), strict=True) if c and c.strip()]
    info["captions"] = len(captions)
    info["caption_samples"] = [{"item_id": i, "caption": c} for i, c in captions[:CAPTION_SAMPLES]]
    info["source"] = describe_source(store)
    done = store.done_ids()
    latest: dict[str, dict[str, Any]] = {}
    fails = store.failures().to_pylist()
    for row in fails:  # oldest first: later rows overwrite, attempts accumulate
        item_id = row["item_id"]
        if item_id in done:
            continue
        prev = latest.get(item_id)
        latest[item_id] = {
            "item_id": item_id,
            "reason": row["reason"],
            "time": row["time"].isoformat() if row["time"] is not None else None,
            "attempts": (prev["attempts"] if prev else 0) + 1,
        }
    info["failed"] = sorted(latest.values(), key=lambda r: r["item_id"])
    info["bytes_on_disk_human"] = human_bytes(info["bytes_on_disk"])
    return info


def describe_source(store: FeatureStore) -> dict[str, Any] | None:
    """A caption store's source store (``StoreMeta.source``) as it is now: ``status`` ``same`` (the
    fingerprint stage two encoded), ``changed`` (re-extracted with other settings since) or
    ``missing``; ``not_encoded``: source items with a caption that are neither in this store nor a
    recorded failure (re-run stage two to add them). None for other stores."""
    recorded = store.meta.source
    if not recorded:
        return None
    out: dict[str, Any] = {
        "store": recorded.get("store"),
        "fingerprint": store.meta.fingerprint_fields.get("captions_from"),
        "backbone": (recorded.get("fingerprint_fields") or {}).get("backbone"),
        "status": "missing",
        "now": None,
        "not_encoded": None,
    }
    try:
        source = FeatureStore.open(str(recorded.get("store")))
    except (FileNotFoundError, ValueError):
        return out
    out["now"] = source.fingerprint
    out["status"] = "same" if source.fingerprint == out["fingerprint"] else "changed"
    if out["status"] == "same":
        ids = source.ids()
        known = store.done_ids() | set(store.failures().column("item_id").to_pylist())
        with_text = [i for i, c in zip(ids, source.captions(ids), strict=True) if c and c.strip()]
        out["not_encoded"] = sum(i not in known for i in with_text)
    return out


def format_store_info(info: dict[str, Any], max_failures: int = 50) -> str:
    """Human-readable lines for `describe_store`'s dict."""
    fields = info["fingerprint_fields"]
    lines = [
        f"store        {info['path']}",
        f"fingerprint  {info['fingerprint']}  (created {info['created']})",
    ]
    for k in sorted(fields):
        v = fields[k]
        text = v if isinstance(v, str) and "\n" not in v else json.dumps(v, sort_keys=True)
        lines.append(f"  {k:<18} {text}")
    others = {fp: n for fp, n in info["row_fingerprints"].items() if fp != info["fingerprint"]}
    if others:
        lines.append(f"WARNING: rows with other fingerprints: {others}")
    per_item = info["bytes_per_item"]
    lines += [
        f"items        {info['items']}  (rows {info['rows']}, shadowed duplicates {info['duplicate_rows']}, "
        f"fragments {info['fragments']}, version {info['version']})",
        f"tokens       [L, S, D] = {info['shape']} {info['dtype']}; layers {info['layer_names']}; "
        f"kinds {info['token_kinds']}",
        f"size         {info['bytes_on_disk_human']}"
        + (f" ({human_bytes(per_item)} per item)" if per_item else ""),
        f"failures     {len(info['failed'])} items without tokens ({info['failures']} log rows)",
    ]
    for row in info["failed"][:max_failures]:
        again = f" [{row['attempts']} attempts]" if row["attempts"] > 1 else ""
        lines.append(f"  {row['item_id']}: {row['reason']}{again}")
    if len(info["failed"]) > max_failures:
        lines.append(f"  ... {len(info['failed']) - max_failures} more (use --json)")
    lines.append(f"captions     {info['captions']} of {info['items']} items carry a caption (generated text)")
    for row in info["caption_samples"]:
        text = " ".join(row["caption"].split())
        lines.append(f"  {row['item_id']}: {text if len(text) <= 100 else text[:97] + '...'}")
    source = info.get("source")
    if source:
        state = {
            "same": "unchanged since",
            "changed": f"CHANGED since: now fingerprint {source['now']}; re-encode into a new store",
            "missing": "not found any more",
        }[source["status"]]
        lines.append(
            f"source       captions of {source['store']} ({source['backbone']}, fingerprint "
            f"{source['fingerprint']}): {state}"
        )
        if source["not_encoded"]:
            lines.append(
                f"  {source['not_encoded']} source items with a caption not encoded yet: re-run to add"
            )
    return "\n".join(lines)
