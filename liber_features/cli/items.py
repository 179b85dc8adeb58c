"""``liber items``: every item's text vector into the ``item_text`` view (Parquet + online).

The ``liber_affinities`` on-demand view compares a candidate's text vector with the user's summary
and shift vectors, so the items go through the text encoder that encoded the memory, at its D
(``features/item_text.check_space`` refuses another D or a D′-projected memory). The vectors are
``encoders/ctr/items.item_vectors`` (cached on disk per catalog and encoder, the ones ``liber
train`` computes) normalised as the boosted ranker's item table holds them (``RankerItems``), so
the view serves the very floats the ranker is trained on. Torch is imported only when it runs.
"""

from __future__ import annotations

from typing import Any

import click

from liber_features.cli.common import emit, fail, ledger_option, open_ledger, require_ledger, schema_option, use_ledger
from liber_features.cli.serve import repo_option
from liber_features.errors import LiberError

__all__ = ["COMMANDS", "encode_items"]


def encode_items(ledger: Any, store: Any, encoder: Any) -> dict[str, Any]:
    """Encode the ledger's items (its catalog and every item with events) with ``encoder``
    (``dim``, ``encoder_id``, ``encode(texts)``) and write the view; returns the summary."""
    import pandas as pd
    from sqlalchemy import select

    from encoders.ctr.items import item_vectors
    from liber_features.features.item_text import check_space, item_text_frame, write_item_text
    from liber_features.features.memory import latest_versions
    from liber_features.features.repo import LiberFeatureConfig
    from liber_features.ledger.store import events as events_t
    from liber_features.ledger.store import items as items_t
    from liber_features.model.ranker_features import RankerItems
    from liber_features.model.vocab import ItemVocab

    shape = LiberFeatureConfig.from_env()
    memory = latest_versions(ledger, required=False, dim=shape.vector_dim)
    check_space(shape, encoder.dim, encoder.encoder_id, memory[2] if memory else None)
    with ledger.engine.connect() as conn:
        catalog = pd.DataFrame(conn.execute(select(items_t.c.item_id, items_t.c.title, items_t.c.categories)).all(),
                               columns=["item_id", "title", "categories"])
        seen = {r[0] for r in conn.execute(select(events_t.c.item_id).distinct())}
    vocab = ItemVocab.build(set(catalog.item_id) | seen)  # the training set's item vocabulary
    unit = RankerItems.from_catalog(vocab, catalog, item_vectors(vocab, catalog, encoder)).text
    ids = sorted(vocab, key=vocab.__getitem__)
    path, written = write_item_text(store, item_text_frame(ids, unit[vocab.index(ids)], encoder.encoder_id), ledger)
    return {"ledger": ledger.safe_url(), "items": len(ids), "written_online": written, "parquet": str(path),
            "text_encoder_id": encoder.encoder_id, "dim": encoder.dim}


@click.command("items")
@ledger_option
@schema_option
@repo_option
@click.option("--device", default=None, help="cuda / cpu for the text encoder (default: cuda when available)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON line")
def items_cmd(ledger_url: str | None, ledger_schema: str | None, repo: str, device: str | None,
              as_json: bool) -> None:
    """Write each item's text vector (title + genres, the memory's text encoder) into the item_text
    view, offline and online: what the liber_affinities on-demand view reads per candidate."""
    from liber_features.features.repo import open_store

    try:
        use_ledger(ledger_url, ledger_schema)
        ledger = open_ledger(require_ledger(ledger_url), ledger_schema)
        store = open_store(repo)
        from encoders.uil.text import TextEncoder

        summary = encode_items(ledger, store, TextEncoder(device=device))
    except LiberError as exc:
        fail(exc, debug=False)
    emit(summary | {"repo": str(repo)}, as_json, "wrote the item_text view")


COMMANDS = [items_cmd]
