"""The demo model's world: a synthetic sound-event dataset and an analyzer that scores prompt adherence."""
