"""The neural backbones' side row (encoders/ctr/side.py): its columns, standardisation fitted on the
train split only, and the scorer's row for a user, item and moment equal to the training row, bit
for bit, through Feast's online store — with the exported graph's score equal to torch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from modelkit import encoded_repo, replay_until, small_world

from encoders.ctr.export import export_onnx, load_checkpoint, save_checkpoint, torch_scores
from encoders.ctr.gbdt import gbdt_features
from encoders.ctr.side import SideFeatures, side_rows
from encoders.ctr.train import Batches, TrainConfig, train
from liber_features.errors import ConfigError
from liber_features.features.memory import versions_of
from liber_features.features.repo import LiberFeatureConfig
from liber_features.features.stats import ITEM_STATS_VIEW, USER_STATS_VIEW
from liber_features.features.sync import sync_view
from liber_features.model.inputs import STAT_NAMES
from liber_features.model.ranker_features import LIBER, RankerItems, side_columns
from liber_features.serving.scorer import LiberScorer, ScorerConfig
from liber_features.training.prepare import checkpoint_meta

SHAPE = LiberFeatureConfig(memory_slots=2, vector_dim=4, history_length=5)
ENV = {"LIBER_MEMORY_SLOTS": "2", "LIBER_VECTOR_DIM": "4", "LIBER_HISTORY_LENGTH": "5"}


class _Ledger:
    def safe_url(self) -> str:
        return "sqlite:///test"


@pytest.fixture(autouse=True)
def small_shape(monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Users 1 and 5 at K = 7; DIN + LIBER with the side row, trained on them and exported."""
    tmp = tmp_path_factory.mktemp("side")
    events, catalog, ledger, ts = small_world(tmp / "full", SHAPE, ("1", "5"), k=7)
    text = np.random.default_rng(0).standard_normal((ts.item_vocab.size, 4)).astype(np.float32)
    text[:2] = 0
    side = side_rows(ts, text)
    r = train(ts, text, TrainConfig(backbone="din", liber="both", epochs=2, batch_size=64, device="cpu"),
              log=lambda _m: None, side=side)
    model_dir = tmp / "model"
    meta = checkpoint_meta(ts, r, versions_of(ledger, ts.encoder_version), _Ledger())
    save_checkpoint(r.model, meta, model_dir)
    card = export_onnx(r.model, meta, model_dir)
    return {"events": events, "catalog": catalog, "ts": ts, "text": text, "side": side, "result": r,
            "card": card, "model_dir": model_dir}


def test_the_side_row_is_the_ranker_row_without_ids_and_liber(full):
    ts, text, side = full["ts"], full["text"], full["side"]
    x, names = gbdt_features(ts, text, None)
    assert side.names == [n for n in names if n not in ("user", "item")]
    assert side.names[:3] == ["hist_len", "hist_cos_mean", "hist_same_genre"]
    assert side.names[3:3 + len(STAT_NAMES)] == list(STAT_NAMES) and side.names[-1].startswith("genre=")
    assert np.array_equal(side.x, x[:, 2:])
    keep, kept = side_columns(["user", "item", "hist_len", *LIBER, "genre=Drama"])
    assert keep.tolist() == [2, 3 + len(LIBER)] and kept == ["hist_len", "genre=Drama"]
    assert full["card"].features == side.names and full["result"].features == side.names


def test_standardisation_is_fitted_on_the_train_split_only(full):
    ts, side = full["ts"], full["side"]
    train_rows = side.x[ts.mask("train")]
    m = SideFeatures(len(side.names), 8)
    m.fit(side.x)  # a fit over every split ...
    all_mean = m.mean.clone()
    noisy = side.x.copy()
    held_out = ~ts.mask("train")
    noisy[held_out] = np.random.default_rng(1).standard_normal(noisy[held_out].shape) * 1e4
    model = full["result"].model
    fresh = SideFeatures(len(side.names), 8)
    fresh.fit(noisy[ts.mask("train")])
    # ... differs from the model's, which equals a fit on train rows alone whatever the rest holds.
    assert torch.equal(model.side.mean, fresh.mean) and torch.equal(model.side.std, fresh.std)
    assert not torch.equal(model.side.mean, all_mean)
    z = np.sign(train_rows.astype(np.float64)) * np.log1p(np.abs(train_rows.astype(np.float64)))
    assert np.allclose(model.side.mean.numpy(), z.mean(0), atol=1e-6)
    const = z.std(0, ddof=1) <= 1e-6  # e.g. a genre no train sample has: std 1, not a division by 0
    assert np.all(model.side.std.numpy()[const] == 1.0)


@pytest.mark.parametrize("moment_rank", [40, 110])
def test_online_side_row_equals_the_training_row_at_the_same_moment(full, tmp_path, moment_rank):
    """Replay the events before a sample's moment into a live repo, materialize as the CLI does, and
    score the sample's candidate: the scorer's dense row is the builder's, bit for bit, and the
    exported graph's score equals torch on the training batch's own inputs."""
    ts, events = full["ts"], full["events"]
    u = "1"
    t, sample, _, repo, store = replay_until(tmp_path / "live", events, full["catalog"], ts, u, moment_rank, SHAPE)
    scorer = LiberScorer.load(full["model_dir"], repo.root, store=store, config=ScorerConfig(fetch="feast"),
                              shape=SHAPE)
    cand = [ts.item_ids[sample], "never-seen"]
    row = scorer.fetcher.fetch([u])[0]
    feeds = scorer.user_side(u, row)
    x = scorer.ranker.rows(feeds, row, scorer.items.index(cand), cand, at_us=t * 1_000_000)
    assert x.shape == (2, len(full["side"].names))
    assert np.array_equal(x[0], full["side"].x[sample])  # bit for bit, every column
    col = dict(zip(full["side"].names, x[0]))
    assert col["user_label_count"] == np.count_nonzero((events.user_id == u) & (events.timestamp < t))
    assert col["seconds_since_previous"] == t - events[(events.user_id == u) & (events.timestamp < t)].timestamp.max()
    assert dict(zip(full["side"].names, x[1]))["item_unseen"] == 1
    res = scorer.score(u, cand, at_us=t * 1_000_000)
    data = Batches(ts, (ts.summary_table, ts.shift_table), torch.device("cpu"), full["side"])
    with torch.no_grad():
        want = torch.sigmoid(full["result"].model(*data.inputs(torch.tensor([sample])))).numpy()
    assert abs(res.scores[0] - want[0]) <= 1e-5
    assert np.abs(res.scores - torch_scores(full["result"].model, {**feeds, "item_idx": scorer.items.index(cand),
                                                                  "dense": x})).max() <= 1e-5


def test_a_card_without_the_side_row_is_still_served_and_a_broken_table_refused(full, tmp_path):
    import shutil

    ts, text = full["ts"], full["text"]
    plain = train(ts, text, TrainConfig(backbone="dcnv2", liber="none", epochs=1, batch_size=64, device="cpu",
                                        side=False), log=lambda _m: None)
    assert plain.features == [] and plain.model.side is None
    ledger, repo, store = encoded_repo(tmp_path / "live", full["events"], full["catalog"], k=7, shape=SHAPE)
    meta = checkpoint_meta(ts, plain, versions_of(ledger, ts.encoder_version), _Ledger())
    card = export_onnx(plain.model, meta, tmp_path / "plain")
    assert card.features == [] and card.item_table is None and card.inputs[-1].name == "item_idx"
    scorer = LiberScorer.load(tmp_path / "plain", repo.root, store=store, shape=SHAPE)
    assert scorer.ranker is None and scorer.score("1", ["1", "3"]).scores.shape == (2,)
    # A side-row model whose item table gives other columns (another catalog's genres) is refused.
    for view in (USER_STATS_VIEW, ITEM_STATS_VIEW):
        sync_view(store, ledger, view)
    broken = tmp_path / "broken"
    shutil.copytree(full["model_dir"], broken)
    items = RankerItems.load(broken / "ranker_items.npz")
    RankerItems(items.text, items.genres[:-1], items.hot[:, :-1], items.categories).save(broken / "ranker_items.npz")
    with pytest.raises(ConfigError, match=f"names {len(full['side'].names)} features, its item table "
                                          f"ranker_items.npz gives {len(full['side'].names) - 1}"):
        LiberScorer.load(broken, repo.root, store=store, shape=SHAPE)
    model, _ = load_checkpoint(full["model_dir"])  # and the checkpoint reloads with its table
    assert model.side_items.genres == full["side"].items.genres
