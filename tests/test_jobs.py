"""Child processes N at a time: prefixed output, outcomes in order, failures named in one line."""

import io
import sys

from src.jobs import Job, failure_summary, run_jobs
from tests.conftest import ROOT


def python(code):
    return (sys.executable, "-c", code)


def test_jobs_stream_prefixed_lines_and_report_their_exit_status():
    jobs = [Job("ok a", python("print('one'); print('two')")), Job("bad b", python("import sys; print('oops', file=sys.stderr); sys.exit(3)")),
            Job("ok c", python("pass"))]
    out = io.StringIO()
    outcomes = run_jobs(jobs, 2, ROOT, out)
    assert [(o.job.name, o.returncode) for o in outcomes] == [("ok a", 0), ("bad b", 3), ("ok c", 0)]
    lines = out.getvalue().splitlines()
    assert sorted(lines) == ["[bad b] oops", "[ok a] one", "[ok a] two"] and lines.index("[ok a] one") < lines.index("[ok a] two")
    assert failure_summary(outcomes) == "1 of 3 jobs failed: bad b (exit 3)"
    assert failure_summary(outcomes[:1]) is None


def test_env_reaches_every_job_on_top_of_this_process_environment(monkeypatch):
    monkeypatch.setenv("INHERITED", "kept")
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    show = python("import os; print(os.environ['INHERITED'], os.environ['MKL_CBWR'])")
    out = io.StringIO()
    run_jobs([Job("a", show), Job("b", show)], 2, ROOT, out, env={"MKL_CBWR": "COMPATIBLE"})
    assert sorted(out.getvalue().splitlines()) == ["[a] kept COMPATIBLE", "[b] kept COMPATIBLE"]
    out = io.StringIO()
    run_jobs([Job("c", show)], 1, ROOT, out)
    assert out.getvalue() == "[c] kept AUTO\n"
