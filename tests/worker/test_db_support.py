"""Settings, tokens, burn-in lookup and the artifact store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select, text

from db import tokens
from db.burn_in import find_reusable_burn_in
from db.models import ApiToken, Checkpoint, Job, JobLog
from db.settings import Settings, settings_table_markdown
from tests.conftest import BACKEND
from worker.artifacts import ArtifactPathError, ArtifactStore, file_sha256


def test_settings_defaults_live_under_home(tmp_path, monkeypatch):
    for key in ("DATABASE_URL", "BROKER_URL", "RESULT_BACKEND", "ARTIFACTS_DIR", "DATA_DIR"):
        monkeypatch.delenv(f"DYART_{key}", raising=False)
    s = Settings(home=tmp_path)
    assert s.database_url == f"sqlite:///{tmp_path}/dyart.db"
    assert s.broker_url == f"sqla+sqlite:///{tmp_path}/broker.db"
    assert s.result_backend == f"db+sqlite:///{tmp_path}/results.db"
    assert s.artifacts_dir == tmp_path / "artifacts" and s.data_dir == tmp_path / "data"


def test_settings_read_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DYART_HOME", str(tmp_path))
    monkeypatch.setenv("DYART_MAX_ATTEMPTS", "5")
    assert Settings().max_attempts == 5 and Settings().home == tmp_path


def test_settings_read_a_dotenv_file_the_environment_overrides(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("DYART_MAX_ATTEMPTS=7\nDYART_SWEEP_SECONDS=3\nOTHER=1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DYART_MAX_ATTEMPTS", raising=False)
    monkeypatch.setenv("DYART_SWEEP_SECONDS", "4")
    settings = Settings(home=tmp_path)
    assert settings.max_attempts == 7 and settings.sweep_seconds == 4


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"heartbeat_seconds": 10, "stale_after_seconds": 20}, "DYART_STALE_AFTER_SECONDS"),
        ({"auth": "off", "host": "0.0.0.0"}, "DYART_AUTH=off is only allowed on a loopback"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"auth": "sometimes"}, "auth"),
    ],
)
def test_settings_reject_unsafe_values(values, message, tmp_path):
    with pytest.raises(ValidationError, match=message):
        Settings(home=tmp_path, **values)


def test_settings_table_lists_every_variable():
    table = settings_table_markdown()
    for name in Settings.model_fields:
        assert f"`DYART_{name.upper()}`" in table
    assert "| `DYART_HEARTBEAT_SECONDS` | `5.0` |" in table


def test_readme_settings_table_is_the_generated_one():
    # A description is edited in db/settings.py; README.md shows settings_table_markdown().
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert settings_table_markdown() in readme


def test_token_authenticates_until_revoked(db_session):
    user = tokens.create_user(db_session, "ann")
    token = tokens.create_token(db_session, user)
    db_session.commit()
    row = db_session.query(ApiToken).one()
    assert (
        token.startswith("dyart_") and row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    )
    assert token not in (row.prefix + row.token_hash) or len(row.prefix) < len(token)
    assert tokens.user_for_token(db_session, token).name == "ann"
    assert tokens.user_for_token(db_session, token + "x") is None
    assert row.last_used_at is not None
    with pytest.raises(tokens.TokenPrefixError, match="too short"):
        tokens.revoke_token(db_session, token[:4])
    assert tokens.revoke_token(db_session, token[:10]) == 1
    db_session.commit()
    assert tokens.user_for_token(db_session, token) is None
    assert tokens.revoke_token(db_session, token[:10]) == 0


def test_a_revoke_prefix_that_starts_two_users_tokens_revokes_nothing(db_session):
    """Only two characters after ``dyart_`` are random in an 8-character prefix."""
    for name, prefix in (("ann", "dyart_ab1234"), ("bo", "dyart_ab9876")):
        user = tokens.create_user(db_session, name)
        db_session.add(ApiToken(user_id=user.id, prefix=prefix, token_hash=name[0] * 64))
    db_session.flush()
    with pytest.raises(tokens.TokenPrefixError) as refused:
        tokens.revoke_token(db_session, "dyart_ab")
    assert str(refused.value) == (
        "token prefix 'dyart_ab' starts active tokens of 2 users (ann, bo): give all 12 "
        "characters that list-tokens shows, or --user NAME"
    )
    assert db_session.query(ApiToken).filter(ApiToken.revoked_at.is_not(None)).count() == 0
    assert tokens.prefix_owners(db_session, "dyart_ab98") == ["bo"]
    assert tokens.revoke_token(db_session, "dyart_ab9876") == 1


def _job_with_burn_in(session, store, owner, config):
    job = Job(owner_id=owner.id, method="dyart", dataset=config["dataset"], config=config)
    session.add(job)
    session.flush()
    folder = store.job_dir(job.id)
    folder.mkdir(parents=True)
    (folder / "burn_in.pt").write_bytes(b"state")
    (folder / "model-burn_in.safetensors").write_bytes(b"w")
    path = store.relative(folder / "model-burn_in.safetensors")
    session.add(Checkpoint(job_id=job.id, kind="burn_in", path=path, size=1, sha256="0" * 64))
    session.flush()
    return job


def test_burn_in_reuse_needs_an_equal_key_and_the_file(db_session, tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    owner = tokens.create_user(db_session, "ann")
    key = {"dataset": "digits", "architecture": "mlp", "seed": 0, "burn_in_epochs": 1}
    source = _job_with_burn_in(db_session, store, owner, {**key, "method": "clean"})
    other = _job_with_burn_in(db_session, store, owner, {**key, "seed": 1})
    asking = Job(owner_id=owner.id, method="dyart", dataset="digits", config=key)
    db_session.add(asking)
    db_session.flush()
    found = find_reusable_burn_in(db_session, asking.id, key, store.resolve)
    assert found == (source.id, store.job_dir(source.id) / "burn_in.pt")
    assert find_reusable_burn_in(db_session, source.id, key, store.resolve) is None  # not itself
    assert (
        find_reusable_burn_in(db_session, asking.id, {**key, "burn_in_epochs": 0}, store.resolve)
        is None
    )
    (store.job_dir(source.id) / "burn_in.pt").unlink()
    assert find_reusable_burn_in(db_session, asking.id, key, store.resolve) is None
    assert other.id != source.id


def test_a_job_stored_before_a_setting_existed_counts_as_its_default(db_session, tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    owner = tokens.create_user(db_session, "ann")
    key = {"dataset": "digits", "architecture": "mlp", "burn_in_epochs": 1}
    older = _job_with_burn_in(db_session, store, owner, dict(key))  # no "precision" in it
    asking = Job(owner_id=owner.id, method="dyart", dataset="digits", config=key)
    db_session.add(asking)
    db_session.flush()
    fp32 = find_reusable_burn_in(db_session, asking.id, {**key, "precision": "fp32"}, store.resolve)
    assert fp32 is not None and fp32[0] == older.id
    bf16 = {**key, "precision": "bf16"}
    assert find_reusable_burn_in(db_session, asking.id, bf16, store.resolve) is None
    newer = _job_with_burn_in(db_session, store, owner, bf16)
    assert find_reusable_burn_in(db_session, asking.id, bf16, store.resolve)[0] == newer.id


def test_artifact_store_refuses_paths_outside_it(tmp_path):
    store = ArtifactStore(tmp_path / "a")
    (tmp_path / "a").mkdir()
    for bad in ("../x", "/etc/passwd", "jobs/../../x"):
        with pytest.raises(ArtifactPathError):
            store.resolve(bad)
    (tmp_path / "a" / "link").symlink_to(tmp_path)
    with pytest.raises(ArtifactPathError, match="leaves"):
        store.resolve("link/secret")
    with pytest.raises(ArtifactPathError, match="32 hexadecimal"):
        store.job_dir("../../etc")
    with pytest.raises(ArtifactPathError, match="outside"):
        store.relative(tmp_path / "elsewhere")


def test_artifact_store_writes_atomically_and_hashes(tmp_path):
    store = ArtifactStore(tmp_path)
    path = store.write_bytes("jobs/x/file.bin", b"abc" * 1000)
    assert path.read_bytes() == b"abc" * 1000 and store.relative(path) == "jobs/x/file.bin"
    assert file_sha256(path) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert [p.name for p in Path(path.parent).iterdir()] == ["file.bin"]  # no temp left


def test_a_burn_in_found_by_its_config_but_made_on_another_split_is_not_reused(
    db_session, tmp_path
):
    from dyart import checkpoint
    from dyart.config import TrainConfig
    from dyart.train import Trainer
    from worker import runner

    store = ArtifactStore(tmp_path / "artifacts")
    owner = tokens.create_user(db_session, "ann")
    config = TrainConfig.from_dict(
        {"dataset": "synthetic", "architecture": "mlp", "method": "clean", "epochs": 1,
         "schedule": "cosine", "burn_in_epochs": 1, "batch_size": 64, "val_size": 64,
         "val_pgd_steps": 1, "eval_eps": []}
    )  # fmt: skip
    source, new = (
        Job(owner_id=owner.id, method="clean", dataset="synthetic", config=config.to_dict())
        for _ in "ab"
    )
    db_session.add_all([source, new])
    db_session.flush()
    Trainer(config, store.job_dir(source.id), device="cpu").run(("burn_in",))
    weights = store.relative(store.job_dir(source.id) / "model-burn_in.safetensors")
    db_session.add(Checkpoint(job_id=source.id, kind="burn_in", path=weights, size=1, sha256="0"))
    db_session.flush()
    burn_in = store.job_dir(source.id) / "burn_in.pt"
    stranger = Job(owner_id=tokens.create_user(db_session, "bo").id, method="clean",
                   dataset="synthetic", config=config.to_dict())  # fmt: skip
    db_session.add(stranger)
    db_session.flush()
    assert runner._reuse_burn_in(db_session, stranger.id, config, store) is None  # not ann's job
    assert db_session.get(Job, stranger.id).burn_in_source_job_id is None
    assert runner._reuse_burn_in(db_session, new.id, config, store) == burn_in
    assert db_session.get(Job, new.id).burn_in_source_job_id == source.id
    db_session.get(Job, new.id).burn_in_source_job_id = None
    state = checkpoint.load_training_state(burn_in)
    state["data_split"] = config.dataset_card.split + 1  # made before the split changed
    checkpoint.save_training_state(burn_in, state)
    assert runner._reuse_burn_in(db_session, new.id, config, store) is None
    assert db_session.get(Job, new.id).burn_in_source_job_id is None
    logs = db_session.scalars(select(JobLog.message).where(JobLog.job_id == new.id)).all()
    refused = (
        f"not reusing the burn-in of job {source.id}: checkpoint: jobs/{source.id}/burn_in.pt "
    )
    assert any(m.startswith(refused) for m in logs), logs
    assert not any(str(tmp_path) in m for m in logs), logs  # no server path in the log


@pytest.mark.skipif(BACKEND != "postgres", reason="SQLite writes one transaction at a time")
def test_a_jobs_log_lines_become_visible_in_id_order(session_factory):
    """A line written while an earlier one is still uncommitted waits for it, so a
    reader following the log by id never passes over a line committed late."""
    import threading

    from db.jobs import add_log

    with session_factory() as setup:
        owner = tokens.create_user(setup, "ann")
        job = Job(owner_id=owner.id, method="dyart", dataset="digits", config={})
        setup.add(job)
        setup.commit()
        job_id = job.id

    first = session_factory()
    add_log(first, job_id, "first")  # inserted, not committed
    done = threading.Event()

    def second_writer() -> None:
        with session_factory() as second:
            add_log(second, job_id, "second")
            second.commit()
        done.set()

    writer = threading.Thread(target=second_writer)
    writer.start()
    with session_factory() as reader:
        while not reader.execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        ).scalar():  # the second writer is waiting on the first (no clock involved)
            reader.rollback()
            assert not done.is_set(), "the second line was committed before the first"
        visible = reader.scalars(select(JobLog.message).where(JobLog.job_id == job_id)).all()
        assert visible == []  # a follower sees neither yet, not "second" alone
    first.commit()
    first.close()
    writer.join(timeout=60)
    assert done.is_set()
    with session_factory() as reader:
        lines = reader.execute(
            select(JobLog.id, JobLog.message).where(JobLog.job_id == job_id).order_by(JobLog.id)
        ).all()
    assert [m for _, m in lines] == ["first", "second"]
