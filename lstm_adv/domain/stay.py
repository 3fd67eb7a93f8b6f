"""One ICU stay of the source database, as the cohort query sees it."""

from __future__ import annotations

from datetime import datetime

import attrs

from lstm_adv.domain.errors import ValidationError


@attrs.frozen
class Stay:
    """An ICU stay with the admission it belongs to, its lengths of stay and the in-hospital mortality label.

    Ages are in years (MIMIC-III's shifted ages above 89 are already reported as 90), lengths of stay
    in days. :meth:`meets` applies the cohort's inclusion rules.
    """

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
            raise ValidationError(f"Stay {self.icustay_id}: outtime {self.outtime} is before intime {self.intime}")
        if self.age_years < 0:
            raise ValidationError(f"Stay {self.icustay_id}: age_years must be >= 0, got {self.age_years}")

    def meets(self, *, min_age_years: float, min_hospital_los_days: float, min_icu_los_days: float) -> bool:
        """Whether the stay passes the inclusion rules: adult, hospital stay and ICU stay long enough."""
        return (
            self.age_years >= min_age_years
            and self.hospital_los_days >= min_hospital_los_days
            and self.icu_los_days >= min_icu_los_days
        )
