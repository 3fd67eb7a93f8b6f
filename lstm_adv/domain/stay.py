"""One ICU stay of the source database, as the cohort query sees it."""

from __future__ import annotations

from datetime import datetime

import attrs

from lstm_adv.domain.errors import ValidationError


@attrs.frozen
class Stay:
    """An ICU stay with the admission it belongs to and the in-hospital mortality label."""

    subject_id: int
    hadm_id: int
    icustay_id: int
    intime: datetime
    outtime: datetime
    age_years: float
    hospital_los_days: float
    icu_los_days: float
    hospital_expire_flag: int = attrs.field(validator=attrs.validators.in_((0, 1)))

    def __attrs_post_init__(self) -> None:
        if self.outtime < self.intime:
            raise ValidationError(
                f"Stay {self.icustay_id}: outtime {self.outtime} is before intime {self.intime}"
            )
        if self.age_years < 0:
            raise ValidationError(f"Stay {self.icustay_id}: age_years must be >= 0, got {self.age_years}")
