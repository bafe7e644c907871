"""platform.references: a sweep's reference runs are composed from their entry, then the sweep's
command line, which wins."""

from platform.app import load_app
from platform.cli import load
from platform.references import reference_specs


def _epochs(argv):
    refs = reference_specs(load(argv), "study", load_app().rules)
    return {label: spec.cfg.mstep.epochs for label, spec in refs}


def test_an_entry_sets_its_reference_and_the_command_line_overrides_it():
    # em_compute's references carry mstep.epochs=20 in their own entries
    assert set(_epochs(["experiment=em_compute"]).values()) == {20}
    shrunk = _epochs(["experiment=em_compute", "mstep.epochs=2"])
    assert len(shrunk) == 3 and set(shrunk.values()) == {2}
    assert all("mstep.epochs=20" in label for label in shrunk)  # the label names the entry's own overrides
