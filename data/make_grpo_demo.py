"""Write the GRPO example's prompts: answer a question about a short profile with the value alone.

    python data/make_grpo_demo.py   # → data/grpo_fields_train.jsonl (200), data/grpo_fields_heldout.jsonl (40)

Each prompt is a three-line profile (name, city, job) and a question about one field; the reward
(data/grpo_rewards.py:first_word) is 1 when the answer's first word is that field's value. The
pretrained 270M answers city questions with the city but job questions in a sentence ("I am a
nurse"), about 0.4 on the held-out set: the groups disagree, so GRPO has a signal. The held-out
profiles use first names, cities and jobs that never appear in the training file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

FIRST = ["Anna", "Ben", "Carla", "David", "Elena", "Frank", "Grace", "Hugo", "Iris", "Jonas", "Kira", "Liam",
         "Maya", "Noah", "Olga", "Pablo", "Rosa", "Sam", "Tara", "Victor"]
FIRST_HELD = ["Wendy", "Xavier", "Yara", "Zoe", "Omar", "Lena"]
LAST = ["Smith", "Garcia", "Rossi", "Dubois", "Novak", "Silva", "Kim", "Tanaka", "Jensen", "Brown"]
CITIES = ["Paris", "Berlin", "Madrid", "Rome", "Lisbon", "Vienna", "Prague", "Oslo", "Dublin", "Athens",
          "Warsaw", "Boston", "Denver", "Toronto", "Sydney", "Cairo"]
CITIES_HELD = ["Lima", "Seoul", "Osaka", "Zurich", "Helsinki", "Chicago"]
JOBS = ["teacher", "baker", "nurse", "pilot", "lawyer", "farmer", "chef", "painter"]
JOBS_HELD = ["doctor", "plumber", "dentist", "writer"]


def record(rng: random.Random, first: list[str], cities: list[str], jobs: list[str]) -> dict[str, str]:
    name, city, job = rng.choice(first), rng.choice(cities), rng.choice(jobs)
    field = rng.choice(["city", "job"])
    prompt = (f"Name: {name} {rng.choice(LAST)}\nCity: {city}\nJob: {job}\n"
              f"Question: What is the {field} of {name}?\nAnswer:")
    return {"prompt": prompt, "answer": city if field == "city" else job}


def main() -> None:
    rng = random.Random(0)
    with (HERE / "grpo_fields_train.jsonl").open("w") as f:
        for _ in range(200):
            f.write(json.dumps(record(rng, FIRST, CITIES, JOBS)) + "\n")
    with (HERE / "grpo_fields_heldout.jsonl").open("w") as f:
        for _ in range(40):
            f.write(json.dumps(record(rng, FIRST_HELD, CITIES_HELD, JOBS_HELD)) + "\n")


if __name__ == "__main__":
    main()
