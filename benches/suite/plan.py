"""What the suite measures: the scenarios, which server runs which, the texts, the pinning, and the
labels the report uses. Plain data; every other module reads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # benches/suite/plan.py -> the repository root
SERVER_CPU, CLIENT_CPU = "0", "1"
SHORT_TEXT = "The service was quick and the food was really good."  # `torchwire-bench load`'s default text
# Review-like texts of 118-126 tokens each (special tokens included) for the long-text scenario;
# kept under 128 so the peers, which truncate at 128, see the same tokens as torchwire.
LONG_TEXTS = [
    "We booked the restaurant for a family birthday after reading several glowing reviews, and the evening "
    "started well: the host found our table quickly, the room was warm and quiet, and the waiter explained the "
    "seasonal menu with real enthusiasm. Sadly the kitchen could not keep up. Our starters arrived after forty "
    "minutes, the soup was lukewarm, the fish was overcooked and dry, and the dessert we had ordered in advance "
    "was simply forgotten. The manager apologised and took the wine off the bill, which was kind, but honestly we "
    "will not be going back there again, not even for a quick lunch.",
    "I have flown with this airline for years and this trip reminded me exactly why I keep choosing them. "
    "Check-in took five minutes, the gate staff boarded families first without any fuss, and the crew greeted "
    "everyone by name. The seat was comfortable enough for a six hour flight, the entertainment system had plenty "
    "of recent films, and the meal was hot and surprisingly tasty. We landed twenty minutes early, my bag was "
    "among the first on the belt, and a friendly agent at the desk helped me rebook my connection in minutes. "
    "Excellent service from start to finish, thank you so much.",
    "This film has a wonderful cast and a beautiful score, yet it never quite decides what story it wants to "
    "tell. The first hour moves slowly through a family reunion in a snowy mountain town, with long scenes of "
    "dinners and arguments that go nowhere. Then, without warning, it turns into a thriller about a missing "
    "brother, and the tone changes so abruptly that I laughed at moments meant to be tense. The lead actress "
    "does her best with a thin script and the photography is often stunning, but by the end I felt tired rather "
    "than moved, and I would not watch it again.",
    "The hotel room was spotless and larger than the photos suggested, with a comfortable bed, blackout curtains "
    "and a quiet air conditioner, so we slept well every night. Breakfast offered fresh fruit, warm pastries and "
    "good coffee, and the staff at reception were patient with our many questions about trains and museums. The "
    "only real problem was the noise from the bar downstairs on the weekend, which lasted until two in the "
    "morning. Even so, the location near the old town and the kind service made it a great base for our week "
    "away, and we would happily book it again next year.",
]
TAB_MODEL, TEXT_MODEL = "heart_disease", "sentiment"
PEER_TAB, PEER_TEXT = "tabular", "sentiment"  # model names inside both peers
SERVER_LABEL = {
    "torchwire": "torchwire",
    "floor": "floor (bare tonic, constant answer)",
    "python": "Python grpcio + torch",
    "torchserve": "TorchServe 0.12",
    "torchserve-batch": "TorchServe 0.12, batching config",
}
GROUPS = ["raw", "floor", "torchwire", "python", "torchserve", "torchserve-batch", "pairs", "http"]
PEERS = ["python", "torchserve", "torchserve-batch"]  # the parts that need the peers folder


@dataclass
class Scenario:
    key: str
    group: str
    rpc: str
    concurrency: int
    rows: int = 1
    long: bool = False


SCENARIOS = [
    Scenario("tab-c1", "tabular", "predict", 1),
    Scenario("tab-c8", "tabular", "predict", 8),
    Scenario("tab-c64", "tabular", "predict", 64),
    Scenario("tab32-c8", "tabular32", "predict", 8, rows=32),
    Scenario("sent-c1", "sentiment", "sentiment", 1),
    Scenario("sent-c4", "sentiment", "sentiment", 4),
    Scenario("sent-c16", "sentiment", "sentiment", 16),
    Scenario("sent-c64", "sentiment", "sentiment", 64),
    Scenario("sent128-c4", "sentiment128", "sentiment", 4, long=True),
]
GROUP_TITLE = {
    "tabular": f"Tabular `{TAB_MODEL}`, 1 row per request",
    "tabular32": f"Tabular `{TAB_MODEL}`, 32 rows per request",
    "sentiment": f"Sentiment, one ~12-token sentence per request (\"{SHORT_TEXT}\")",
    "sentiment128": "Sentiment, one ~120-token review per request (4 texts in rotation)",
}
SERVER_SCENARIOS = {
    "floor": ["tabular", "tabular32"],
    "torchwire": ["tabular", "tabular32", "sentiment", "sentiment128"],
    "python": ["tabular", "tabular32", "sentiment", "sentiment128"],
    "torchserve": ["tabular", "tabular32", "sentiment", "sentiment128"],
    "torchserve-batch": ["sentiment"],
}


class StepError(Exception):
    """A server or command failed: recorded in the results, and the suite goes on."""
