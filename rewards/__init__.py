"""Reward components (pure: no Kafka, no torch). Shared by the join and the learner."""
