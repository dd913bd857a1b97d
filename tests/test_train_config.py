"""Typed configs, presets and the trainer's clear set-up errors (issue 5)."""

from dataclasses import asdict

import pytest
from omegaconf import OmegaConf

from swe_aem.cli import main
from swe_aem.config import CONFIG_ROOT, Config, ConfigError, load_config
from swe_aem.policy.models import load_preset
from swe_aem.train.resolve import check_hardware, engine_settings
from swe_aem.train.rollouts import TrainingSetupError


def test_yaml_defaults_mirror_the_dataclasses():
    from_yaml = OmegaConf.to_container(OmegaConf.load(CONFIG_ROOT / "train.yaml"))
    assert from_yaml == asdict(Config())


def test_the_rollout_section_reaches_the_agent():
    """rollout.agent is the agent's one settings type: what the section sets is what the
    episodes run with, resolved for the model (the run's flat copy once dropped a field:
    rollout.max_turns never reached the episodes, which ran on to their timeout)."""
    tiny = load_preset("tiny")
    cfg = load_config(overrides=["rollout.agent.max_turns=5", "rollout.agent.max_context_tokens=999999",
                                 "rollout.agent.episode_timeout_s=77", "rollout.agent.max_malformed_calls=2",
                                 "rollout.agent.temperature=0.5", "rollout.agent.tool_timeout_s=9",
                                 "rollout.agent.thinking=true"])  # null: the preset's (test_agent_thinking)
    agent = cfg.rollout.agent.for_model(tiny)
    assert (agent.max_turns, agent.episode_timeout_s, agent.max_malformed_calls, agent.temperature,
            agent.tool_timeout_s, agent.thinking) == (5, 77, 2, 0.5, 9, True)
    assert agent.max_context_tokens == tiny.max_model_len  # capped at the window
    assert agent.tool_call_format == tiny.tool_call_format  # null in the section: the preset's
    unset = load_config(overrides=["rollout.agent.max_context_tokens=null"]).rollout.agent
    assert unset.for_model(tiny).max_context_tokens == tiny.max_model_len


def test_layers_and_overrides():
    cfg = load_config("grpo_aem", "deepswe_aem", ["rollout.agent.max_turns=7", "algo.aem_lambda=0.5"])
    assert cfg.model == "qwen3-32b" and cfg.algo.aem and cfg.algo.aem_lambda == 0.5
    assert cfg.rollout.tasks_per_step == 64 and cfg.rollout.samples_per_task == 8
    assert cfg.rollout.agent.max_turns == 7 and cfg.trainer.lr == 1e-6 and cfg.algo.tis_cap is None
    base = load_config(recipe="deepswe")
    assert base.algo.advantage == "rloo" and not base.algo.aem and base.algo.loss_agg == "seq-mean-token-sum"
    # the toy recipe keeps the published algorithm settings
    toy = load_config(recipe="deepswe_tiny")
    assert (toy.algo.clip_high, toy.algo.compact_filtering, toy.model) == (0.28, True, "tiny")


@pytest.mark.parametrize("bad, message", [
    (["algo.nope=1"], "nope"),
    (["rollout.agent.max_turns=abc"], "max_turns"),
    (["algo.advantage=ppo"], "algo.advantage"),
    (["rollout.samples_per_task=1"], "samples_per_task"),
    (["steps"], "key=value"),
    (["heldout.instances_matching=op_(change"], "heldout.instances_matching"),
    (["rollout.agent.top_p=0.95"], "rollout.agent.top_p=0.95: training samples with top_p 1 only"),
    (["rollout.parity_max_kl=-1"], "parity_max_kl"),
    (["rollout.max_turns=8"], "rollout.max_turns is now rollout.agent.max_turns"),
    (["rollout.agent.seed=3"], "seeds each step's episodes from trainer.seed"),
])
def test_bad_overrides_name_the_problem(bad, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=bad)


def test_unknown_recipe_lists_known_ones():
    with pytest.raises(ConfigError, match="deepswe"):
        load_config(recipe="nonexistent")


def test_gpu_preset_without_gpu_is_a_clear_error():
    with pytest.raises(TrainingSetupError, match="needs 8 GPU"):
        check_hardware(load_preset("32b"))
    check_hardware(load_preset("tiny"))  # CPU preset: fine


def test_preset_fills_trainer_settings():
    s = engine_settings(load_config(overrides=["trainer.zero_stage=3"]), load_preset("tiny"))
    assert s.zero_stage == 3 and not s.bf16 and s.micro_batch_tokens == load_preset("tiny").micro_batch_tokens
    s32 = engine_settings(load_config(), load_preset("32b"))
    assert s32.bf16 and s32.offload_params and s32.zero_stage == 3


def test_train_cli_errors(capsys, tmp_path):
    assert main(["train", "--algo", "nope"]) == 2
    assert "unknown algo config" in capsys.readouterr().err
    # a hub preset offline: says so instead of hanging or downloading
    assert main(["train", "--model", "1.5b", "--launcher", "none", "--run-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "1.5b" in err and ("needs 1 GPU" in err or "hub" in err)



def test_a_config_that_cannot_train_is_refused_before_the_warm_start(capsys, tmp_path):
    """`swe-aem train` resolves the run (train/resolve.py) before its warm start's SFT or
    any launch: a KL term, which needs a reference model the trainer does not load, is
    refused at once and nothing is written (it once was refused after the engine build)."""
    run = tmp_path / "run"
    assert main(["train", "--model", "tiny", "--launcher", "none", "--run-dir", str(run),
                 "algo.kl_coef=0.1"]) == 1
    err = capsys.readouterr().err
    assert "algo.kl_coef > 0 needs a reference model" in err and "warm start" not in err
    assert not run.exists()


# The published DeepSWE recipe, field by field, with where each value comes from
# (rLLM examples/swe/train_deepswe_32b*.sh, rllm/environments/swe, R2E-Gym's runtime,
# the AEM paper's reproduction as reported in the shared NOTES).
PUBLISHED_DEEPSWE = {
    "model": "qwen3-32b",                       # Qwen3-32B
    "algo.advantage": "rloo",                   # algorithm.adv_estimator=rloo
    "algo.clip_high": 0.28,                     # actor.clip_ratio_high
    "algo.loss_agg": "seq-mean-token-sum",      # actor.loss_agg_mode
    "algo.kl_coef": 0.0,                        # use_kl_loss=False
    "algo.compact_filtering": True,             # overlong_filter=True
    "algo.tis_cap": None,                       # no rollout/trainer correction
    "rollout.tasks_per_step": 64,               # train_batch_size
    "rollout.samples_per_task": 8,              # rollout.n
    "rollout.oversample": 2.0,                  # AEM paper: 2x over-sampling
    "rollout.filter_groups": True,              #   and rejection of all-equal groups
    "rollout.max_sampling_rounds": 1,           #   once (no top-up: a step may shrink)
    "rollout.agent.max_turns": 50,                    # agent.max_steps
    "rollout.agent.max_context_tokens": 4096 + 32768,  # max_prompt_length + max_response_length
    "rollout.agent.temperature": 1.0,
    "rollout.agent.episode_timeout_s": 5400.0,        # agent.trajectory_timeout
    "rollout.agent.tool_timeout_s": 120.0,            # CMD_TIMEOUT
    "trainer.lr": 1e-6,
    "trainer.mini_batches": 64 // 8,            # ppo_mini_batch_size=8
    "run.dataset": "R2E-Gym/R2E-Gym-Subset",
    "run.dataset_format": "r2e-gym",
    "run.steps": 250,                           # AEM paper's SWE run
    "run.save_every": 10,                       # save_freq
    "run.grade_timeout_s": 300.0,               # run_tests.sh under timeout 300
}


def _get(cfg, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def test_deepswe_recipe_is_the_published_one_field_by_field():
    cfg = load_config(recipe="deepswe")
    wrong = {k: (_get(cfg, k), v) for k, v in PUBLISHED_DEEPSWE.items() if _get(cfg, k) != v}
    assert not wrong, f"differs from the published recipe (ours, published): {wrong}"
    # none of the tiny defaults leak into the recipe
    tiny = load_config()
    for key in ("run.sandbox_memory", "rollout.agent.max_observation_chars", "rollout.agent.max_new_tokens"):
        assert _get(cfg, key) != _get(tiny, key), key
    aem = load_config(recipe="deepswe_aem")
    assert aem.algo.aem and aem.algo.aem_lambda == 1.0 and aem.algo.aem_min_range == 0.1
    assert all(_get(aem, k) == v for k, v in PUBLISHED_DEEPSWE.items())
    preset = load_preset("qwen3-32b")
    assert (preset.tensor_parallel_size, preset.gpu_memory_utilization, preset.offload_params,
            preset.offload_optimizer) == (8, 0.6, True, True)


def test_async_training_without_an_importance_cap_is_refused():
    """Stale tokens trained with no decoupled correction would train as on-policy: the
    DeepSWE recipe (tis_cap null, as published) plus max_staleness is refused, naming the knob."""
    from swe_aem.plan import run_preset
    from swe_aem.train.resolve import check_async

    def check(*overrides):
        cfg = load_config(recipe="deepswe", overrides=list(overrides))
        check_async(cfg, run_preset(cfg, load_preset(cfg.model)))

    with pytest.raises(ConfigError, match=r"algo\.tis_cap is null"):
        check("placement=split", "rollout.max_staleness=1")
    check("placement=split", "rollout.max_staleness=1", "algo.tis_cap=2.0")
    check()  # synchronous: no cap needed


def test_run_records_its_effective_sampling(tmp_path):
    """config.yaml names every sampling field the requests send, and the server's generation
    config: what `swe-aem plan` shows too."""
    import yaml

    from swe_aem.policy.client import NEUTRAL_SAMPLING
    from swe_aem.train.resolve import recorded_config

    text = recorded_config(load_config(overrides=["rollout.agent.temperature=0.7"]))
    eff = yaml.safe_load(text)["effective_sampling"]
    assert eff["rollout"]["temperature"] == 0.7 and eff["heldout"]["temperature"] == 0.0
    for key, value in NEUTRAL_SAMPLING.items():
        assert eff["rollout"][key] == value
    assert eff["rollout"]["server_generation_config"] == "vllm"
    assert eff["rollout"]["logprobs_mode"] == "processed_logprobs"


def _yaml_writer():
    """scripts/write_train_yaml.py as a module (scripts/ is no package)."""
    import importlib.util

    path = CONFIG_ROOT.parent / "scripts" / "write_train_yaml.py"
    spec = importlib.util.spec_from_file_location("write_train_yaml", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_config_field_has_a_docstring():
    """Issue 27 (SkyRL's typed configs): each field of each config section is documented by
    the string literal right under it, which configs/train.yaml's comments come from."""
    from dataclasses import fields

    from swe_aem.config import config_sections, field_docs

    sections = config_sections()
    assert {c.__name__ for c in sections} == {
        "Config", "VllmConfig", "AlgoConfig", "RolloutConfig", "TrainerConfig", "LoraConfig",
        "RunConfig", "WarmStartConfig", "HeldoutConfig", "AgentConfig"}
    missing = [f"{c.__name__}.{f.name}" for c in sections for f in fields(c)
               if not field_docs(c).get(f.name, "").strip()]
    assert not missing, f"config fields without a docstring (a string literal under the field): {missing}"


def test_field_docs_reads_the_literal_under_each_field():
    from dataclasses import dataclass

    from swe_aem.config import field_docs

    @dataclass
    class Section:
        documented: int = 1
        """First line.

            Indented detail."""
        bare: str = "x"  # a comment is no docstring
        after_bare: float = 0.5
        """Its own."""

    assert field_docs(Section) == {"documented": "First line.\n\nIndented detail.", "after_bare": "Its own."}


def test_train_yaml_is_what_the_writer_writes(tmp_path, capsys):
    """configs/train.yaml is written from the dataclasses (defaults, order, comments from the
    docstrings' first sentences): a new field, default or docstring needs it rewritten."""
    writer = _yaml_writer()
    assert (CONFIG_ROOT / "train.yaml").read_text() == writer.render(), (
        "configs/train.yaml is not what swe_aem/config.py gives: run `python scripts/write_train_yaml.py`")
    assert writer.summary("None: off. Detail.") == "null: off"
    assert writer.summary('Evict past this (e.g. "150G"). More.') == 'Evict past this (e.g. "150G")'
    # --check: exit 1 with a diff when the file is stale, 0 once rewritten
    writer.TRAIN_YAML = tmp_path / "train.yaml"
    writer.TRAIN_YAML.write_text(writer.render().replace("model: tiny", "model: other"))
    assert writer.main(["--check"]) == 1
    out = capsys.readouterr()
    assert "-model: other" in out.out and "python scripts/write_train_yaml.py" in out.err
    assert writer.main([]) == 0 and writer.main(["--check"]) == 0


def test_the_warm_start_and_the_held_out_set_select_tasks_alike():
    """One task-selection type: the same filters and seeded draw for both sections, each with
    its defaults; a filter that leaves nothing names its section; bad values are refused alike."""
    from types import SimpleNamespace

    from swe_aem.config import ConfigError, HeldoutConfig, TaskSelection, WarmStartConfig

    rows = [SimpleNamespace(instance_id=f"x.func_pm_op_{i}", patch="-a\n+b\n") for i in range(6)]
    rows.append(SimpleNamespace(instance_id="x.other", patch="-a\n+b\n"))
    ws, ho = WarmStartConfig(tasks=3), HeldoutConfig(tasks=3)
    assert isinstance(ws, TaskSelection) and isinstance(ho, TaskSelection)
    assert ws.draw(rows, 7, "warm_start") == ho.draw(rows, 7, "heldout")  # same rule, same seed
    assert len(ws.draw(rows, 7, "warm_start")) == 3 and "x.other" not in ws.draw(rows, 7, "warm_start")
    assert len({tuple(ws.draw(rows, seed, "warm_start")) for seed in range(10)}) > 1  # the seed draws
    assert (ws.split, ho.split, ws.dataset, ho.dataset) == ("train", "test", "generated", None)
    with pytest.raises(ConfigError, match="heldout.instances_matching / max_fix_lines"):
        HeldoutConfig(instances_matching="nothing").draw(rows, 0, "heldout")
    for section in ("warm_start", "heldout"):
        with pytest.raises(ConfigError, match=f"{section}.max_fix_lines must be >= 1"):
            load_config(overrides=[f"{section}.max_fix_lines=0"])
