"""Model cards and Hub pushes, without network: ``HfApi`` is replaced by a fake that records what would be sent."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
import setuptools
import transformers.utils.hub
from huggingface_hub import ModelCard, ModelCardData, RepoUrl
from tiny import tiny_model, tiny_tokenizer

import bitnet_hf
from bitnet_hf import hub
from bitnet_hf.cli import main
from bitnet_hf.distill import BitDistillConfig

ROOT = Path(__file__).resolve().parents[1]
REMOTE_CODE = {"base.py", "kernels.py", "layers.py", "quantization.py", "qwen3.py"}
PACKED_FILES = {"README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", *REMOTE_CODE}
RECIPE = {
    "base_model": "Qwen/Qwen3-0.6B", "license": "apache-2.0", "task": "SST-2", "teacher": "me/qwen3-0.6b-sst2-sft",
    "stages": [{"name": "Continued pre-training", "hyperparameters": {"tokens": 10_000_000, "block_size": 512}}],
    "results": [{"method": "FP16-SFT", "accuracy": 0.9148, "size MiB": 1137.5},
                {"method": "BitDistill", "accuracy": 0.914, "size MiB": 213.25, "tokens/s": 41.5}],
}


class FakeHfApi:
    """Stands in for ``huggingface_hub.HfApi``: records every call and the files of each commit."""

    made: ClassVar[list["FakeHfApi"]] = []

    def __init__(self, token=None, **_):
        self.token, self.calls, self.files = token, [], {}
        FakeHfApi.made.append(self)

    def create_repo(self, repo_id, *, private=None, exist_ok=False, **_):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        return RepoUrl(f"https://huggingface.co/{repo_id if '/' in repo_id else 'me/' + repo_id}")

    def create_branch(self, repo_id, *, branch, exist_ok=False, **_):
        self.calls.append(("create_branch", repo_id, branch, exist_ok))

    def create_commit(self, repo_id, operations, *, commit_message, revision=None, create_pr=False, **_):
        self.calls.append(("create_commit", repo_id, commit_message, revision, create_pr))
        for op in operations:
            with op.as_file() as f:
                self.files[op.path_in_repo] = f.read()
        return SimpleNamespace(pr_url=f"https://huggingface.co/{repo_id}/discussions/1" if create_pr else None)


@pytest.fixture
def fake_hub(monkeypatch):
    """No network, and no token unless a test gives one (the machine's own login must not leak in)."""
    FakeHfApi.made = []
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    return FakeHfApi.made


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A packed checkpoint with tokenizer, recipe and training arguments; a bare training checkpoint."""
    root = tmp_path_factory.mktemp("hub")
    model = bitnet_hf.convert_to_bitnet(tiny_model("qwen3"))
    bitnet_hf.save_checkpoint(bitnet_hf.pack_bitnet(model), root / "packed", tokenizer=tiny_tokenizer())
    bitnet_hf.save_checkpoint(model, root / "train")
    (root / "packed" / hub.RECIPE_FILE).write_text(json.dumps(RECIPE))
    config = BitDistillConfig(output_dir=str(root / "kd"), distill_preset="classification", learning_rate=1e-5,
                              max_steps=1000, per_device_train_batch_size=32)
    (root / "packed" / hub.TRAINING_ARGS_FILE).write_text(config.to_json_string())
    return SimpleNamespace(packed=root / "packed", train=root / "train")


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def test_card_metadata_round_trips_and_the_hub_schema_accepts_it(checkpoints):
    card = hub.render_model_card(checkpoints.packed, repo_id="me/qwen3-bitnet-sst2")
    data = ModelCard(str(card)).data.to_dict()
    assert data["base_model"] == "Qwen/Qwen3-0.6B" and data["base_model_relation"] == "quantized"
    assert data["library_name"] == "transformers" and data["license"] == "apache-2.0"
    assert data["pipeline_tag"] == "text-generation"
    assert data["tags"][:4] == ["bitnet", "1.58-bit", "bitdistill", "ternary"]
    assert ModelCardData(**data).to_dict() == data
    assert hub.GENERATED_MARKER in card.text


def test_card_sections_hold_the_recipe_results_size_and_load_snippets(checkpoints):
    text = str(hub.render_model_card(checkpoints.packed, repo_id="me/qwen3-bitnet-sst2"))
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == ["## Recipe and hyper-parameters", "## Results", "## Size", "## How to load it", "## License",
                        "## Citation"]
    assert "- **Task:** SST-2" in text and "- **Teacher:** me/qwen3-0.6b-sst2-sft" in text
    assert "packed for deployment" in text and "- **SubLN placement:** `paper`" in text
    # recipe stages and the training arguments' hyper-parameters, distillation weights included
    assert "### Continued pre-training" in text and "| `tokens` | 10000000 |" in text
    for row in ("| `learning_rate` | 1e-05 |", "| `max_steps` | 1000 |", "| `per_device_train_batch_size` | 32 |",
                "| `logits_distill_weight` | 10 |", "| `attention_distill_weight` | 100000 |",
                "| `distill_temperature` | 5 |", "| `relation_kind` | scaled_dot |", "| `qkv_weights` | 1, 1, 1 |"):
        assert row in text
    assert "`attention_distill_layer`" not in text  # None: the model's default layer, not a value to show
    # the results rows, in a table with every column any row has
    assert "| method | accuracy | size MiB | tokens/s |\n|---|---|---|---|\n" in text
    assert "| FP16-SFT | 0.9148 | 1137.5 |  |\n| BitDistill | 0.914 | 213.25 | 41.5 |" in text
    mib = (checkpoints.packed / "model.safetensors").stat().st_size / 2**20
    assert f"{mib:.2f} MiB of safetensors weights in 1 file(s), packed deployment format." in text
    assert 'AutoModelForCausalLM.from_pretrained("me/qwen3-bitnet-sst2")' in text and "import bitnet_hf" in text
    assert 'AutoModelForCausalLM.from_pretrained("me/qwen3-bitnet-sst2", trust_remote_code=True)' in text
    assert "`apache-2.0`, the license of the base model." in text
    assert "eprint        = {2510.13998}" in text


def test_card_of_a_bare_training_checkpoint_and_the_overrides(checkpoints):
    text = str(hub.render_model_card(checkpoints.train))
    data = ModelCard(text).data.to_dict()
    assert "base_model" not in data and data["license"] == "other"
    assert "**Base model:** not recorded" in text and "the license of the base model applies" in text
    assert "training checkpoint: latent float32 weights" in text and ", training format." in text
    assert "No recipe or training arguments were recorded" in text and "No evaluation results" in text
    assert f'from_pretrained("{checkpoints.train}")' in text  # no repo id: the snippets load the folder

    table = "| method | BLEU |\n|---|---|\n| BitDistill | 12.5 |"
    card = hub.render_model_card(checkpoints.train, base_model="HuggingFaceTB/SmolLM2-135M", license="mit",
                                 results=table, tags=["sst2", "bitnet"])
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M" and card.data.license == "mit"
    assert card.data.tags == ["bitnet", "1.58-bit", "bitdistill", "ternary", "sst2"]
    assert table in card.text and "`mit`." in card.text

    with pytest.raises(ValueError, match="base_model '/data/qwen3' is not a Hub repository id"):
        hub.render_model_card(checkpoints.train, base_model="/data/qwen3")


def test_base_model_falls_back_to_a_hub_id_recorded_in_the_config(checkpoints, tmp_path):
    folder = copy_of(checkpoints.train, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    for recorded, expected in (("Qwen/Qwen3-0.6B", "Qwen/Qwen3-0.6B"), ("/data/models/qwen3", None), ("qwen3", None)):
        (folder / "config.json").write_text(json.dumps({**config, "_name_or_path": recorded}))
        assert hub.render_model_card(folder).data.to_dict().get("base_model") == expected


def test_card_refuses_a_checkpoint_that_is_not_bitnet(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "fp")
    with pytest.raises(ValueError, match="not a BitNet checkpoint .model_type 'llama'.; convert it first"):
        hub.render_model_card(tmp_path / "fp")


def test_upload_plan_takes_the_model_files_and_leaves_training_leftovers(checkpoints, tmp_path):
    folder = copy_of(checkpoints.packed, tmp_path)
    assert hub.upload_plan(folder) == sorted(Path(p) for p in PACKED_FILES | {hub.RECIPE_FILE, hub.TRAINING_ARGS_FILE})
    for stray in ("checkpoint-5/optimizer.pt", "checkpoint-5/model.safetensors", ".final.tmp/model.safetensors",
                  "runs/events.out.tfevents.1", "training_args.bin", "optimizer.pt", "scheduler.pt",
                  "rng_state.pth", "trainer_state.json", "train.log", "notes.txt", "train.py", "pytorch_model.bin"):
        (folder / stray).parent.mkdir(parents=True, exist_ok=True)
        (folder / stray).write_bytes(b"x")
    (folder / "special_tokens_map.json").write_text("{}")
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "tools.jinja").write_text("{{ x }}")
    expected = PACKED_FILES | {hub.RECIPE_FILE, hub.TRAINING_ARGS_FILE, "special_tokens_map.json",
                               "additional_chat_templates/tools.jinja"}
    assert {p.as_posix() for p in hub.upload_plan(folder)} == expected


def test_upload_plan_refuses_pickles_missing_weights_shards_and_code(checkpoints, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(checkpoints.train / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match=r"no \*\.safetensors weights; it holds pytorch_model\.bin \(pickle\).*"
                                         r"save_pretrained"):
        hub.upload_plan(pickled)
    (pickled / "pytorch_model.bin").unlink()
    with pytest.raises(ValueError, match=r"has no \*\.safetensors weights\. Load the model"):
        hub.upload_plan(pickled)
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        hub.upload_plan(tmp_path / "missing")

    sharded = copy_of(checkpoints.train, tmp_path)
    index = {"metadata": {}, "weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="lists shards that are not in the folder: model-00002-of-00002"):
        hub.upload_plan(sharded)
    (sharded / "model.safetensors.index.json").unlink()
    (sharded / "layers.py").unlink()  # imported by base.py: the plan follows the imports, not a list of names
    with pytest.raises(ValueError, match=r"auto_map needs \(through qwen3.py\) layers.py, which is not in"):
        hub.upload_plan(sharded)
    (sharded / "qwen3.py").unlink()
    with pytest.raises(ValueError, match="auto_map names qwen3.py, which is not in"):
        hub.upload_plan(sharded)


def test_push_uploads_exactly_the_plan_and_the_card_and_leaves_the_folder_alone(checkpoints, tmp_path, fake_hub):
    folder = copy_of(checkpoints.packed, tmp_path)
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "optimizer.pt").write_bytes(b"x")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    url = hub.push_checkpoint(folder, "me/qwen3-bitnet", token="hf_test", private=True, tags=["sst2"])

    assert url == "https://huggingface.co/me/qwen3-bitnet"
    [api] = fake_hub
    assert api.token == "hf_test"
    assert api.calls[0] == ("create_repo", "me/qwen3-bitnet", True, True)
    assert api.calls[1] == ("create_commit", "me/qwen3-bitnet", "Upload BitNet model (bitnet-hf)", None, False)
    assert set(api.files) == PACKED_FILES | {hub.RECIPE_FILE, hub.TRAINING_ARGS_FILE}
    assert api.files["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    card = ModelCard(api.files["README.md"].decode())
    assert card.data.base_model == "Qwen/Qwen3-0.6B" and "sst2" in card.data.tags
    assert 'from_pretrained("me/qwen3-bitnet")' in card.text
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before  # no README.md written


def test_push_keeps_a_users_own_card_and_rerenders_one_of_ours(checkpoints, tmp_path, fake_hub):
    folder = copy_of(checkpoints.packed, tmp_path)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# My own card\n")
    hub.push_checkpoint(folder, "me/x", token="t")
    assert fake_hub[-1].files["README.md"] == b"---\nlicense: mit\n---\n# My own card\n"

    (folder / "README.md").write_text(f"<!-- {hub.GENERATED_MARKER} --> an old card of ours")
    hub.push_checkpoint(folder, "me/x", token="t", revision="v1", create_pr=True)
    assert b"## How to load it" in fake_hub[-1].files["README.md"]
    assert fake_hub[-1].calls[1] == ("create_branch", "me/x", "v1", True)
    assert fake_hub[-1].calls[2][3:] == ("v1", True)


def test_push_checks_repo_id_folder_and_token_before_any_network(checkpoints, tmp_path, fake_hub, monkeypatch):
    with pytest.raises(ValueError, match=r"no Hugging Face token: run `hf auth login` or set HF_TOKEN, or pass --token"):
        hub.push_checkpoint(checkpoints.packed, "me/x")
    for bad in ("", "me/x/y", "bad id!"):
        with pytest.raises(ValueError, match="is not a Hub repository id"):
            hub.push_checkpoint(checkpoints.packed, bad, token="t")
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        hub.push_checkpoint(tmp_path / "missing", "me/x", token="t")
    assert fake_hub == []
    monkeypatch.setattr(hub, "get_token", lambda: "hf_stored")  # `hf auth login` / HF_TOKEN
    hub.push_checkpoint(checkpoints.packed, "x", token=None)
    assert fake_hub[0].token == "hf_stored" and fake_hub[0].calls[1][1] == "me/x"  # namespace from the Hub


def test_model_push_to_hub_writes_the_bitnet_card(fake_hub, monkeypatch):
    def no_transformers_hub(*args, **kwargs):
        raise AssertionError("transformers' own push path must not run")

    monkeypatch.setattr(transformers.utils.hub, "hf_api", no_transformers_hub)
    model = bitnet_hf.pack_bitnet(bitnet_hf.convert_to_bitnet(tiny_model("qwen3")))
    model.add_model_tags(["mine"])
    with pytest.raises(ValueError, match="no Hugging Face token"):
        model.push_to_hub("me/qwen3-bitnet")
    url = model.push_to_hub("me/qwen3-bitnet", token="t", tags=["sst2"], base_model="Qwen/Qwen3-0.6B",
                            commit_message="first")
    assert url == "https://huggingface.co/me/qwen3-bitnet"
    [api] = fake_hub
    assert api.calls[1][2] == "first"
    assert set(api.files) == {"README.md", "config.json", "generation_config.json", "model.safetensors", *REMOTE_CODE}
    data = ModelCard(api.files["README.md"].decode()).data
    assert data.library_name == "transformers" and data.base_model == "Qwen/Qwen3-0.6B"
    assert data.tags == ["bitnet", "1.58-bit", "bitdistill", "ternary", "mine", "sst2"]


def test_model_push_to_hub_without_the_plugin_is_transformers_own(monkeypatch):
    """Remote code where bitnet-hf is not installed: the import inside push_to_hub fails, transformers pushes."""
    api = FakeHfApi()
    monkeypatch.setitem(sys.modules, "bitnet_hf.hub", None)
    monkeypatch.setattr(transformers.utils.hub, "hf_api", lambda: api)
    monkeypatch.setattr(transformers.utils.hub, "create_and_tag_model_card",
                        lambda repo_id, tags, token=None: ModelCard("---\nlibrary_name: transformers\n---\ngeneric"))
    bitnet_hf.convert_to_bitnet(tiny_model("qwen3")).push_to_hub("me/x")
    assert "model.safetensors" in api.files and api.files["README.md"].endswith(b"generic")


def test_cli_push_prints_the_url_and_the_files(checkpoints, fake_hub, capsys):
    assert main(["push", str(checkpoints.packed), "me/qwen3-bitnet", "--token", "t", "--private",
                 "--base-model", "Qwen/Qwen2.5-0.5B", "--license", "mit", "--message", "hello"]) == 0
    out = capsys.readouterr().out
    assert f"pushed {checkpoints.packed} -> https://huggingface.co/me/qwen3-bitnet" in out
    listed = [line.split()[0] for line in out.splitlines()[1:]]
    assert listed == sorted(PACKED_FILES | {hub.RECIPE_FILE, hub.TRAINING_ARGS_FILE})
    assert "README.md                                model card" in out
    [api] = fake_hub
    assert api.calls[0] == ("create_repo", "me/qwen3-bitnet", True, True) and api.calls[1][2] == "hello"
    data = ModelCard(api.files["README.md"].decode()).data
    assert data.base_model == "Qwen/Qwen2.5-0.5B" and data.license == "mit"


def test_cli_push_errors_exit_2_with_a_clear_message(checkpoints, tmp_path, fake_hub, capsys):
    assert main(["push", str(tmp_path / "missing"), "me/x", "--token", "t"]) == 2
    assert "bitnet-hf push: error:" in (err := capsys.readouterr().err) and "not a checkpoint folder" in err
    assert main(["push", str(checkpoints.packed), "me/x"]) == 2
    assert "no Hugging Face token: run `hf auth login` or set HF_TOKEN" in capsys.readouterr().err
    assert main(["push", str(checkpoints.packed), "not/a/repo", "--token", "t"]) == 2
    assert "repo_id 'not/a/repo' is not a Hub repository id" in capsys.readouterr().err
    assert fake_hub == []


def test_example_dry_run_prints_the_card_and_the_plan(checkpoints, fake_hub, capsys):
    spec = importlib.util.spec_from_file_location("push_example", ROOT / "examples" / "push_to_hub.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main([str(checkpoints.packed), "me/qwen3-bitnet", "--dry-run"]) == 0
    out = capsys.readouterr().out
    card, plan = out.split("Files a push uploads:\n")
    assert ModelCard(card).data.tags[:3] == ["bitnet", "1.58-bit", "bitdistill"]
    assert 'from_pretrained("me/qwen3-bitnet")' in card
    assert plan.split() == sorted(PACKED_FILES | {hub.RECIPE_FILE, hub.TRAINING_ARGS_FILE})
    assert fake_hub == []


def test_template_ships_in_the_wheel_and_the_package_list_is_complete():
    """pyproject lists packages explicitly (model_cards/ maps into bitnet_hf/): a new subpackage must be added."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = set(setuptools.find_packages(str(ROOT), include=["bitnet_hf*"]))
    assert set(setuptools_config["packages"]) == on_disk | {"bitnet_hf.model_cards"}
    assert setuptools_config["package-dir"] == {"bitnet_hf.model_cards": "model_cards"}
    assert (ROOT / "model_cards" / hub.TEMPLATE_FILE).read_text() == hub._template_text()
