"""LIBER feature definitions: the contract a ranker fetches by ``user_id``.

``feast apply`` imports every .py here, so this module only declares objects: it reads the
environment (vector shape, data directory, through ``liber_features.settings``, a ~50 ms import
on top of the repo module) but opens no file and no connection.

The data directory is per ledger unless ``LIBER_DATA_DIR`` says otherwise: ``data/ledger-<key>``,
the key hashing ``LIBER_LEDGER_URL`` and ``LIBER_LEDGER_SCHEMA`` (``settings.data_dir_for``), which
needs no database connection. So apply with the environment of the ledger whose tables Feast should
read; liber commands given ``--ledger`` set it for the definitions they load themselves.

- ``user_long_term_memory``: one row per (user, sealed partition) in the offline Parquet; online
  holds the newest row, i.e. the last min(count, M) partition summary/shift vectors, flattened
  (only filled slots: at most M×D float32).
- ``user_short_term_cache``: the current unsealed cache, pushed online as it changes
  (``user_short_term_cache_push``); its Parquet is the batch source for training joins.
- ``user_stats`` (by ``user_id``) and ``item_stats`` (by ``item_id``): point-in-time counts, smoothed
  rates and the user's last event time, one row per entity per change, stamped 1 µs after the
  events they count so that a join at ``t`` sees only events strictly before ``t``
  (``liber_features/features/stats.py``).
- ``item_text`` (by ``item_id``): each item's unit text vector, from the text encoder that encoded
  the memory (``liber items``; ``liber_features/features/item_text.py``).
- ``liber_affinities``: an on-demand view (python mode) over ``user_long_term_memory`` and
  ``item_text``: by ``user_id`` + ``item_id``, LIBER's affinity features — the partition count and
  the candidate's cosines to the newest, max and mean summary and shift vectors — computed by the
  function the boosted ranker trains with (``liber_features/model/affinity.py``).
- ``liber_ranker_v1``: the two memory views; ``liber_affinities_v1``: the affinity view. The
  versioned names are what rankers pin.
"""

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Float32, Float64, Int64, String, UnixTimestamp

from liber_features.features.repo import (
    AFFINITY_SERVICE,
    AFFINITY_VIEW,
    ITEM_TEXT_VIEW,
    LONG_TERM_VIEW,
    RANKER_SERVICE,
    SHORT_TERM_PUSH_SOURCE,
    SHORT_TERM_VIEW,
    TAG_MEMORY_SLOTS,
    TAG_VECTOR_DIM,
    LiberFeatureConfig,
    data_file,
)
from liber_features.features.stats import ITEM_STATS_VIEW, USER_STATS_VIEW
from liber_features.model.affinity import AFFINITY_FEATURES

HERE = Path(__file__).parent  # a path computation, not a read: data is located, never opened
SHAPE = LiberFeatureConfig.from_env()
SHAPE_TAGS = {TAG_MEMORY_SLOTS: str(SHAPE.memory_slots), TAG_VECTOR_DIM: str(SHAPE.vector_dim)}

# Lifelong memory must not age out: a user's newest partition may be years old (MovieLens starts in
# 1996) and still be their memory. The ttl bounds point-in-time joins and the first
# materialize-incremental window (now - ttl), so it is set far beyond any data; Feast does not
# apply it on online reads anyway.
LIFELONG = timedelta(days=365 * 100)

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A user of the recommender; LIBER memory is kept per user.",
)

long_term_source = FileSource(
    name="user_long_term_memory_source",
    path=data_file("user_long_term_memory.parquet", HERE),
    timestamp_field="sealed_at",
    created_timestamp_column="created_at",
    description="One row per (user_id, sealed_at): state after that partition was encoded.",
)

user_long_term_memory = FeatureView(
    name=LONG_TERM_VIEW,
    entities=[user],
    ttl=LIFELONG,
    online=True,
    schema=[
        Field(name="user_id", dtype=String),
        Field(name="partition_count", dtype=Int64),
        Field(
            name="summary_vectors",
            dtype=Array(Float32),
            vector_length=SHAPE.vector_length,
            description="Interest-summary vectors of the last min(partition_count, M) partitions, "
                        "slot 0 newest, flattened (at most M×D floats: only filled slots).",
        ),
        Field(
            name="shift_vectors",
            dtype=Array(Float32),
            vector_length=SHAPE.vector_length,
            description="Interest-shift vectors, aligned with summary_vectors.",
        ),
        Field(
            name="recent_item_ids",
            dtype=Array(String),
            description="Last L item ids of the sealed partitions; the ranker's history is these + the cache.",
        ),
        Field(name="latest_summary", dtype=String),
        Field(name="latest_shift", dtype=String),
        Field(name="encoder_version", dtype=String),
    ],
    source=long_term_source,
    tags=SHAPE_TAGS,
    description="LIBER long-term memory: the last M partitions' summary and shift vectors.",
)

short_term_source = FileSource(
    name="user_short_term_cache_source",
    path=data_file("user_short_term_cache.parquet", HERE),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_at",
)

short_term_push = PushSource(name=SHORT_TERM_PUSH_SOURCE, batch_source=short_term_source)

user_short_term_cache = FeatureView(
    name=SHORT_TERM_VIEW,
    entities=[user],
    # A cache lives until it is sealed, however long the user is away: same horizon as memory.
    ttl=LIFELONG,
    online=True,
    schema=[
        Field(name="user_id", dtype=String),
        Field(name="cache_item_ids", dtype=Array(String)),
        Field(
            name="cache_event_types",
            dtype=Array(String),
            description="Event type of each cached behaviour (view, purchase, ...), aligned with "
                        "cache_item_ids; '' where the event had none.",
        ),
        Field(name="cache_length", dtype=Int64),
        Field(name="cache_oldest_at", dtype=UnixTimestamp),
        Field(name="cache_newest_at", dtype=UnixTimestamp),
    ],
    source=short_term_push,
    description="LIBER short-term cache: behaviours not yet sealed into a partition.",
)

item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.STRING,
    description="A catalog item; its statistics are kept per item.",
)


def _counts(prefix: str) -> list[Field]:
    return [Field(name=f"{prefix}_event_count", dtype=Int64, description="events, any type, strictly before t"),
            Field(name=f"{prefix}_label_count", dtype=Int64, description="labelled samples strictly before t"),
            Field(name=f"{prefix}_positive_count", dtype=Int64),
            Field(name=f"{prefix}_rated_count", dtype=Int64, description="samples carrying a rating"),
            Field(name=f"{prefix}_positive_rate", dtype=Float64, description="smoothed towards a fixed prior"),
            Field(name=f"{prefix}_mean_rating", dtype=Float64, description="smoothed towards a fixed prior")]


user_stats_source = FileSource(
    name="user_stats_source",
    path=data_file(f"{USER_STATS_VIEW}.parquet", HERE),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_at",
    description="One row per (user_id, event time + 1 µs): statistics of the events up to that time.",
)

user_stats = FeatureView(
    name=USER_STATS_VIEW,
    entities=[user],
    ttl=LIFELONG,  # a user's history counts however long ago it was
    online=True,
    schema=[Field(name="user_id", dtype=String), *_counts("user"),
            Field(name="user_last_event_at", dtype=UnixTimestamp, description="the newest event strictly before t"),
            Field(name="user_genre_label_counts", dtype=Array(Int64),
                  description="labels per genre, in the tables' genre vocabulary (Parquet metadata liber.genres)"),
            Field(name="user_genre_positive_counts", dtype=Array(Int64), description="positives per genre")],
    source=user_stats_source,
    description="Point-in-time user statistics: counts, smoothed positive rate and mean rating.",
)

item_stats_source = FileSource(
    name="item_stats_source",
    path=data_file(f"{ITEM_STATS_VIEW}.parquet", HERE),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_at",
    description="One row per (item_id, event time + 1 µs): statistics of the events up to that time.",
)

item_stats = FeatureView(
    name=ITEM_STATS_VIEW,
    entities=[item],
    ttl=LIFELONG,
    online=True,
    schema=[Field(name="item_id", dtype=String), *_counts("item")],
    source=item_stats_source,
    description="Point-in-time item statistics; item_event_count 0 (or no row) = unseen before t.",
)

item_text_source = FileSource(
    name="item_text_source",
    path=data_file(f"{ITEM_TEXT_VIEW}.parquet", HERE),
    timestamp_field="event_timestamp",  # the epoch: an item's text vector is timeless
    created_timestamp_column="created_at",
    description="One row per item: its unit text vector (liber items).",
)

item_text = FeatureView(
    name=ITEM_TEXT_VIEW,
    entities=[item],
    ttl=LIFELONG,
    online=True,
    schema=[Field(name="item_id", dtype=String),
            Field(name="text_vector", dtype=Array(Float32), vector_length=SHAPE.vector_dim,
                  description="Unit text vector of title + genres, D floats, the memory's encoder and space."),
            Field(name="text_encoder_id", dtype=String)],
    source=item_text_source,
    tags=SHAPE_TAGS,
    description="Each item's text vector, in the space of the LIBER memory vectors.",
)


@on_demand_feature_view(
    name=AFFINITY_VIEW,
    sources=[user_long_term_memory[["partition_count", "summary_vectors", "shift_vectors"]],
             item_text[["text_vector"]]],
    schema=[Field(name=AFFINITY_FEATURES[0], dtype=Int64),  # no description: Feast compares it with the inferred field
            *(Field(name=n, dtype=Float64) for n in AFFINITY_FEATURES[1:])],
    mode="python",
    description="LIBER affinity features of (user_id, item_id): the boosted ranker's own definition.",
)
def liber_affinities(inputs: dict) -> dict:
    # Feast rebuilds this function from its source text wherever it reads the registry: one import.
    from liber_features.model.affinity import transform

    return transform(inputs)


liber_ranker_v1 = FeatureService(
    name=RANKER_SERVICE,
    features=[user_long_term_memory, user_short_term_cache],
    description="Everything a LIBER ranker reads for one user, in one online fetch.",
)

liber_affinities_v1 = FeatureService(
    name=AFFINITY_SERVICE,
    features=[liber_affinities],
    description="LIBER affinity features by user_id + item_id, for a ranker that is not ours.",
)
