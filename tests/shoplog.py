"""A small generated shop log for the own-data tests: products, views and purchases, no ratings.

Deterministic (one seeded generator): 120 products named like a real catalog ("Pixelon 4K
Monitor", categories "Electronics|Computing"), 40 users who each favour two top-level
categories, about 3,000 events over 60 days — mostly views, a purchase now and then, usually of
something viewed shortly before. Timestamps alternate between ISO-8601 text and epoch seconds, as
real exports mix them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["CATEGORIES", "shop_log"]

CATEGORIES = {
    "Electronics": ["Audio", "Computing", "Cameras"],
    "Home": ["Kitchen", "Garden", "Lighting"],
    "Sports": ["Running", "Cycling", "Camping"],
    "Books": ["Fiction", "Cooking", "Travel"],
}
_BRANDS = ["Pixelon", "Maison Café", "Nordvik", "Aurora", "Trailhead", "Quill & Co"]
_THINGS = {
    "Audio": "Headphones", "Computing": "4K Monitor", "Cameras": "Mirrorless Camera", "Kitchen": "Espresso Machine",
    "Garden": "Hose Reel", "Lighting": "Desk Lamp", "Running": "Trail Shoes", "Cycling": "Bike Light",
    "Camping": "Tent", "Fiction": "Novel", "Cooking": "Cookbook", "Travel": "Guide",
}
START = 1_704_067_200  # 2024-01-01T00:00:00Z


def shop_log(seed: int = 23, users: int = 40, products: int = 120) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(events: user_id, item_id, timestamp, event_type; catalog: item_id, title, categories)."""
    rng = np.random.default_rng(seed)
    pairs = [(top, sub) for top, subs in CATEGORIES.items() for sub in subs]
    rows = []
    for p in range(products):
        top, sub = pairs[p % len(pairs)]
        rows.append((f"p{p:03d}", f"{_BRANDS[p % len(_BRANDS)]} {_THINGS[sub]} {p // len(pairs) + 1}",
                     f"{top}|{sub}"))
    catalog = pd.DataFrame(rows, columns=["item_id", "title", "categories"])
    by_top = {top: catalog.item_id[catalog.categories.str.startswith(top + "|")].to_numpy() for top in CATEGORIES}
    tops = list(CATEGORIES)
    events = []
    for u in range(users):
        liked = rng.choice(tops, size=2, replace=False)
        t = START + int(rng.integers(0, 86_400 * 5))
        for _ in range(int(rng.integers(55, 95))):
            t += int(rng.integers(60, 86_400))
            top = liked[int(rng.integers(2))] if rng.random() < 0.8 else tops[int(rng.integers(len(tops)))]
            item = str(rng.choice(by_top[top]))
            events.append((f"u{u:02d}", item, t, "view"))
            # A purchase follows a view of a liked category more often than one of another.
            if rng.random() < (0.25 if top in liked else 0.05):
                events.append((f"u{u:02d}", item, t + int(rng.integers(30, 3_600)), "purchase"))
    df = pd.DataFrame(events, columns=["user_id", "item_id", "timestamp", "event_type"])
    iso = pd.to_datetime(df.timestamp, unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    df["timestamp"] = np.where(np.arange(len(df)) % 2 == 0, iso, df.timestamp.astype(str))
    return df, catalog
