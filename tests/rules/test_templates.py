"""Message templates: every documented variable renders, internals are refused, secrets
are masked, output is length-limited."""

from __future__ import annotations

import pytest

from reconciler.events import Event, EventType
from reconciler.log.masking import Masker
from reconciler.rules import templates

SECRET = "tok_9f8e7d6c5b4a"


def _variables(error: str = "exit status 1", **data: object) -> dict:
    event = Event(
        EventType.RUN_FAILED,
        "2026-11-29T10:00:00Z",
        run_id="run-42",
        project="shop",
        env="prod",
        version="1.4.2",
        stage="release",
        task="deploy",
        target="web-1",
        error=error,
        data={"trigger": "webhook", "committer": "alice", **data},
    )
    return templates.variables(
        event,
        public_url="https://qf.example.com/",
        severity="critical",
        alert={
            "id": 9,
            "rule": "prod-deploy-failed",
            "title": "deploy failed",
            "severity": "critical",
            "count": 3,
        },
        entries=[
            {
                "project": "shop",
                "env": "prod",
                "version": "1.4.2",
                "error": "x",
                "count": 2,
                "run": "run-42",
                "title": "t",
            }
        ],
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ project }}", "shop"),
        ("{{ env }}", "prod"),
        ("{{ version }}", "1.4.2"),
        ("{{ run.id }}", "run-42"),
        ("{{ run.state }}", "failed"),
        ("{{ run.trigger }}", "webhook"),
        ("{{ run.url }}", "https://qf.example.com/runs/run-42"),
        ("{{ stage }}", "release"),
        ("{{ task }}", "deploy"),
        ("{{ target }}", "web-1"),
        ("{{ status }}", "failed"),
        ("{{ error }}", "exit status 1"),
        ("{{ severity }}", "critical"),
        ("{{ links.run }}", "https://qf.example.com/runs/run-42"),
        ("{{ links.status_page }}", "https://qf.example.com/"),
        ("{{ trigger }}", "webhook"),
        ("{{ committer }}", "alice"),
        ("{{ event }}", "run_failed"),
        ("{{ at }}", "2026-11-29T10:00:00Z"),
        ("{{ alert.rule }} x{{ alert.count }}", "prod-deploy-failed x3"),
        (
            "{% for e in entries %}{{ e.project }}/{{ e.env }} x{{ e.count }}{% endfor %}",
            "shop/prod x2",
        ),
        ("{{ severity | upper }} {{ project }}/{{ env }}", "CRITICAL shop/prod"),
    ],
)
def test_each_documented_variable_renders(source: str, expected: str) -> None:
    assert templates.render(source, _variables()) == expected


def test_run_state_from_event_data_wins_and_committer_falls_back_to_actor() -> None:
    event = Event(EventType.TASK_FAILED, "t", run_id="r", data={"state": "running", "actor": "bob"})
    variables = templates.variables(event)
    assert variables["run"]["state"] == "running"
    assert variables["committer"] == "bob"
    assert variables["links"] == {"run": "", "status_page": ""}


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
        "{{ run.__class__ }}",
        "{{ run['__class__'] }}",
        "{{ project | attr('__class__') }}",
        "{{ '{0.__class__}'.format(project) }}",
        "{{ lipsum.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ 'x' * 100000000 }}",
        "{{ 9 ** 99999999 }}",
        "{{ '' | center(1000000000) }}",
        "{{ 'x'.ljust(1000000000) }}",
        "{{ '%0999999999d' % 1 }}",
        "{% for i in range(10**8) %}x{% endfor %}",
    ],
)
def test_a_template_reaching_python_internals_or_unbounded_sizes_is_refused(source: str) -> None:
    with pytest.raises(templates.TemplateRefused):
        templates.render(source, _variables())


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ run['__class__'] }}",
        "{{ project | attr('__class__') }}",
        "{% if %}",
    ],
)
def test_check_refuses_internals_and_syntax_before_rendering(source: str) -> None:
    assert templates.check(source)


def test_check_accepts_the_default_templates_and_a_normal_one() -> None:
    for source in (
        templates.DEFAULT_EVENT_TEMPLATE,
        templates.DEFAULT_ALERT_TEMPLATE,
        templates.DEFAULT_DIGEST_TEMPLATE,
        "[{{ severity | default('info') | upper }}] {{ project }}/{{ env }} {{ version }}: {{ status }}",
    ):
        assert templates.check(source) is None


def test_invalid_syntax_is_refused() -> None:
    with pytest.raises(templates.TemplateRefused, match="invalid template"):
        templates.render("{% for %}", _variables())


def test_a_secret_in_a_variable_is_masked_even_through_a_filter() -> None:
    masker = Masker([SECRET])
    variables = _variables(
        error=f"git clone https://x:{SECRET}@git.example.com failed", committer=SECRET
    )
    text = templates.render(
        "{{ error }} | {{ committer | upper }} | {{ error | reverse }}", variables, masker=masker
    )
    assert SECRET not in text
    assert SECRET.upper() not in text
    assert SECRET[::-1] not in text
    assert "***" in text


def test_output_is_cut_at_the_limit_and_a_secret_at_the_cut_is_not_half_shown() -> None:
    masker = Masker([SECRET])
    source = "{% for i in range(5000) %}ab{% endfor %}"
    text = templates.render(source, _variables(), limit=100)
    assert len(text) == 100 and text.endswith(templates.TRUNCATED)
    straddling = templates.render("{{ 'a' * 95 }}" + SECRET, _variables(), masker=masker, limit=100)
    assert SECRET[:5] not in straddling


def test_default_templates_render_an_event_an_alert_and_a_digest() -> None:
    variables = _variables()
    event_text = templates.render(templates.DEFAULT_EVENT_TEMPLATE, variables)
    assert event_text.splitlines()[0] == "shop/prod 1.4.2: failed"
    assert "https://qf.example.com/runs/run-42" in event_text
    alert_text = templates.render(templates.DEFAULT_ALERT_TEMPLATE, variables)
    assert alert_text.startswith("[CRITICAL] deploy failed (×3)")
    digest_text = templates.render(templates.DEFAULT_DIGEST_TEMPLATE, variables)
    assert "1. shop/prod 1.4.2 (×2): x" in digest_text
