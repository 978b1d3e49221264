"""The read models as an eventsourcing `Projection`, for the library's `ProjectionRunner`.

The ledger itself applies whole pages at a time (`ReadModels.catch_up`); this class lets
the library's runner drive the same code one event at a time (each event and its
tracking position in one transaction), e.g. on PostgreSQL:

    ProjectionRunner(application_class=LedgerApplication,
                     projection_class=ReadModelProjection,
                     view_class=PostgresReadModelRecorder, env=application_env(settings))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection
from eventsourcing.utils import get_topic

from ledger.policies import load_policy
from ledger.projections.recorder import ReadModelRecorder
from ledger.projections.schema import PROJECTION_NAME, fingerprint
from ledger.projections.state import SUBJECT_TOPICS, EventRecord


class ReadModelProjection(Projection[ReadModelRecorder]):
    """Applies one domain event to the read models, with its tracking position."""

    name = PROJECTION_NAME
    topics = ()

    def __init__(self, view: ReadModelRecorder) -> None:
        super().__init__(view)
        policy_path = os.environ.get("LEDGER_POLICY")
        self.policy = load_policy(Path(policy_path) if policy_path else None)
        if view.stored_fingerprint() != fingerprint(self.policy):
            view.reset(fingerprint(self.policy))

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        topic = get_topic(type(domain_event))
        records = []
        if topic in SUBJECT_TOPICS:
            records.append(
                EventRecord(
                    str(domain_event.originator_id),
                    domain_event.originator_version,
                    tracking.notification_id,
                    topic,
                    dict(vars(domain_event)),
                )
            )
        self.view.apply(records, tracking.notification_id, expected=None, policy=self.policy)
