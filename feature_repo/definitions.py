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
- ``liber_ranker_v1``: both views; the versioned name is what rankers pin.
"""

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Int64, String, UnixTimestamp

from liber_features.features.repo import (
    LONG_TERM_VIEW,
    RANKER_SERVICE,
    SHORT_TERM_PUSH_SOURCE,
    SHORT_TERM_VIEW,
    TAG_MEMORY_SLOTS,
    TAG_VECTOR_DIM,
    LiberFeatureConfig,
    data_file,
)

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

liber_ranker_v1 = FeatureService(
    name=RANKER_SERVICE,
    features=[user_long_term_memory, user_short_term_cache],
    description="Everything a LIBER ranker reads for one user, in one online fetch.",
)
