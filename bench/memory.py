"""Bench item 5: state per active player, and resident memory over a steady run.

What the streaming tracker keeps per player is what `_TrackPlayerFn` writes to its
state cell, encoded with its coder, as the runner stores it.
The steady run drives the tracker's own rules (PlayerTimeline accept/advance, the
same calls the DoFn makes) for N players who all stay active throughout (each
observed every 8 s on average, moving on a level now and then; nobody leaves, so the
population is constant and any growth would be a leak), with every player's state
kept encoded in a dict, the way the FnApiRunner's in-memory state store keeps it, and
samples this process's resident memory every 10 s of event time. It leaves out the runner's own
per-key bookkeeping and its state cache (bounded at 100 MB by Beam).

    python -m bench.memory PLAYERS   (prints one JSON line)
"""

import heapq
import json
import random
import subprocess
import sys

from bench.common import ROOT, percentile
from pipeline.apps.simulator import campaign_levels
from pipeline.rules.player_state import PlayerTimeline
from pipeline.transforms.track_players import _StoredPlayer, _TrackPlayerFn

TIMEOUT_MS = 300_000
MEAN_GAP_MS = 8_000
WATERMARK_LAG_MS = 10_000
STEP_MS = 1_000


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20


def steady_run(players: int, warmup_minutes: float, steady_minutes: float, seed: int = 9) -> dict:
    rng = random.Random(seed)
    levels = campaign_levels()
    coder = _TrackPlayerFn.PLAYER.coder
    store = {}  # player -> encoded (timeline, pending): the runner's state, per key
    wake = {}  # player -> the instant their timer is set to (one timer per player, as in Beam)
    due_at = {}  # second -> players whose timer is set within it
    arrivals = []  # heap of (event time, player, level index): the next observation of each player
    t0 = 1_795_000_000_000

    def set_timer(player, at):
        """Moves the player's one timer; it fires in the step the watermark passes it."""
        if player in wake:
            due_at.get(wake[player] // STEP_MS, set()).discard(player)
        wake[player] = at
        due_at.setdefault(-(-at // STEP_MS), set()).add(player)

    for n in range(players):
        heapq.heappush(arrivals, (t0 + rng.randrange(MEAN_GAP_MS), f"p{n:06d}", 0))
    samples = []
    end_ms = t0 + int((warmup_minutes + steady_minutes) * 60_000)
    now = t0
    while now < end_ms:
        now += STEP_MS
        # Observations of this second arrive: what process() does with them.
        while arrivals and arrivals[0][0] <= now:
            time_ms, player, level_index = heapq.heappop(arrivals)
            encoded = store.get(player)
            stored = coder.decode(encoded) if encoded else _StoredPlayer(PlayerTimeline(), ())
            timeline, item = stored.timeline.accept(time_ms, levels[level_index], (f"e{time_ms}{player}", 0))
            store[player] = coder.encode(_StoredPlayer(timeline, (*stored.pending, item)))
            set_timer(player, timeline.wake_at_ms(TIMEOUT_MS))
            if rng.random() < 0.15:
                level_index = min(len(levels) - 1, level_index + 1)
            heapq.heappush(
                arrivals, (time_ms + 1 + int(rng.expovariate(1 / MEAN_GAP_MS)), player, level_index)
            )
        # Timers the watermark has passed fire: what on_wake() does.
        watermark = now - WATERMARK_LAG_MS
        while due_at.get(watermark // STEP_MS):  # a timer moved within this second fires too
            player = due_at[watermark // STEP_MS].pop()
            at = wake[player]
            stored = coder.decode(store[player])
            timeline, _, later = stored.timeline.advance(list(stored.pending), at, TIMEOUT_MS)
            if timeline.is_done():
                del store[player], wake[player]
                continue
            store[player] = coder.encode(_StoredPlayer(timeline, tuple(later)))
            set_timer(player, timeline.wake_at_ms(TIMEOUT_MS))
        if (now - t0) % 10_000 == 0:
            samples.append(((now - t0) / 60_000, rss_mib(), len(store)))
    sizes = [len(encoded) for encoded in store.values()]
    steady = [s for s in samples if s[0] >= warmup_minutes]
    first, last = steady[0][1], steady[-1][1]
    return {
        "players": players,
        "active_players_at_end": len(store),
        "state_bytes_per_player_mean": sum(sizes) / len(sizes),
        "state_bytes_per_player_p99": percentile(sizes, 0.99),
        "state_bytes_total_mib": sum(sizes) / 2**20,
        "warmup_minutes": warmup_minutes,
        "steady_minutes": steady_minutes,
        "rss_first_mib": first,
        "rss_last_mib": last,
        "rss_max_mib": max(s[1] for s in steady),
        "rss_growth_fraction": (last - first) / first,
        "rss_samples": samples,
    }


def measure_in_child(players: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "bench.memory", str(players)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"},
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(steady_run(int(sys.argv[1]), warmup_minutes=0.25, steady_minutes=1)))
