"""Tests of backend/settings.py: Settings.from_env parsing and validation."""

from __future__ import annotations

import dataclasses

import pytest

from backend.settings import ENVIRONMENT, Settings, SettingsError
from model.hua import HUAConfig


class TestFromEnv:
    def test_empty_environment_gives_the_defaults(self):
        assert Settings.from_env({}) == Settings()

    def test_reads_the_given_mapping_not_os_environ(self, monkeypatch):
        monkeypatch.setenv("PORT", "1234")
        assert Settings.from_env({}).port == Settings().port
        assert Settings.from_env().port == 1234

    def test_parses_each_type(self):
        settings = Settings.from_env(
            {
                "PORT": "9999",
                "BATCH_SIZE": "3",
                "SCORE_THRESHOLD": "0.25",
                "FETCH_TIMEOUT": "2.5",
                "ALLOW_WEIGHTS_DOWNLOAD": "false",
                "ALLOWED_IMAGE_HOSTS": " images.example.com , cdn.example.com:8443,,",
                "MODEL_DIR": "/srv/models",
                "BACKBONE": "resnet50_fpn_v2",
            }
        )
        assert settings.port == 9999 and isinstance(settings.port, int)
        assert settings.batch_size == 3
        assert settings.display_threshold == 0.25
        assert settings.fetch_timeout == 2.5
        assert settings.allow_weights_download is False
        assert settings.allowed_image_hosts == ("images.example.com", "cdn.example.com:8443")
        assert settings.model_dir == "/srv/models"
        assert settings.backbone == "resnet50_fpn_v2"

    @pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "on"])
    def test_true_spellings(self, raw):
        assert Settings.from_env({"ALLOW_WEIGHTS_DOWNLOAD": raw}).allow_weights_download is True

    @pytest.mark.parametrize("raw", ["0", "false", "False", "no", "off"])
    def test_false_spellings(self, raw):
        assert Settings.from_env({"ALLOW_WEIGHTS_DOWNLOAD": raw}).allow_weights_download is False

    def test_an_empty_value_counts_as_unset(self):
        assert Settings.from_env({"PORT": "", "BASIC_AUTH_USER": ""}) == Settings()

    def test_every_variable_maps_to_a_field(self):
        names = {f.name for f in dataclasses.fields(Settings)}
        assert set(ENVIRONMENT.values()) <= names

    @pytest.mark.parametrize(
        "env",
        [
            {},
            {
                "ALLOWED_IMAGE_HOSTS": "a.example.com,b.example.com:8443",
                "TRAIN_REINIT": "true",
                "SYNC_LAMBDA": "0.3",
                "HUA_CANDIDATES": "12",
                "TRAIN_SEED": "7",
                "BASIC_AUTH_USER": "u",
                "BASIC_AUTH_PASS": "p",
                "EPOCHS": "3",
            },
        ],
    )
    def test_to_env_round_trips(self, env):
        """Job processes are configured by to_env, so they run with the service's settings."""
        settings = Settings.from_env(env)
        assert Settings.from_env(settings.to_env()) == settings
        assert set(settings.to_env()) == set(ENVIRONMENT)


class TestInvalidValues:
    @pytest.mark.parametrize(
        "name, raw",
        [
            ("PORT", "ninety"),
            ("BATCH_SIZE", "2.5"),
            ("MAX_IMAGE_PIXELS", "1e6"),
            ("SCORE_THRESHOLD", "high"),
            ("FETCH_TIMEOUT", "30s"),
            ("ALLOW_WEIGHTS_DOWNLOAD", "maybe"),
        ],
    )
    def test_unparsable_value_names_the_variable(self, name, raw):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: raw})

    @pytest.mark.parametrize(
        "name", ["BATCH_SIZE", "FETCH_WORKERS", "WORKERS", "THREADS", "MAX_IMAGE_PIXELS", "HUA_DIVERSITY_WINDOW"]
    )
    def test_counts_below_one_are_refused(self, name):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: "0"})

    @pytest.mark.parametrize("raw", ["0", "-5"])
    def test_predict_deadline_must_be_positive(self, raw):
        with pytest.raises(SettingsError, match="PREDICT_DEADLINE"):
            Settings.from_env({"PREDICT_DEADLINE": raw})

    def test_unknown_device(self):
        with pytest.raises(SettingsError, match="DEVICE"):
            Settings.from_env({"DEVICE": "tpu"})

    @pytest.mark.parametrize(
        "name, raw", [("BACKBONE", "vgg16"), ("SCORE_THRESHOLD", "1.5"), ("SCORE_THRESHOLD", "-0.1")]
    )
    def test_detector_values_out_of_range(self, name, raw):
        # the message names the setting (DetectorConfig's in lower case)
        with pytest.raises(SettingsError) as info:
            Settings.from_env({name: raw})
        assert name.lower() in str(info.value).lower()

    def test_settings_error_is_a_value_error(self):
        assert issubclass(SettingsError, ValueError)


class TestValidate:
    def test_basic_auth_user_without_password_is_refused(self):
        with pytest.raises(SettingsError, match="BASIC_AUTH_PASS"):
            Settings.from_env({"BASIC_AUTH_USER": "ml"})

    def test_basic_auth_password_without_user_is_refused(self):
        with pytest.raises(SettingsError, match="BASIC_AUTH_USER"):
            Settings.from_env({"BASIC_AUTH_PASS": "secret"})

    def test_basic_auth_pair_is_accepted(self):
        settings = Settings.from_env({"BASIC_AUTH_USER": "ml", "BASIC_AUTH_PASS": "secret"})
        assert (settings.basic_auth_user, settings.basic_auth_pass) == ("ml", "secret")

    @pytest.mark.parametrize("url", ["localhost:8080", "label-studio:8080", "ftp://ls.example.com", "//ls.example.com"])
    def test_label_studio_url_needs_an_http_scheme(self, url):
        with pytest.raises(SettingsError, match="LABEL_STUDIO_URL"):
            Settings.from_env({"LABEL_STUDIO_URL": url})

    @pytest.mark.parametrize("url", ["http://localhost:8080", "https://ls.example.com/"])
    def test_label_studio_url_with_scheme_is_accepted(self, url):
        assert Settings.from_env({"LABEL_STUDIO_URL": url}).label_studio_url == url


class TestSettingsObject:
    def test_repr_has_no_secret(self):
        settings = Settings(
            api_key="tok-1234567890", basic_auth_user="ml", basic_auth_pass="pw-0987654321", webhook_secret="hook-5555"
        )
        text = repr(settings)
        for secret in ("tok-1234567890", "pw-0987654321", "hook-5555"):
            assert secret not in text
        assert "ml" in text  # the user name is not a secret, and repr still says something

    def test_is_frozen(self):
        with pytest.raises(dataclasses.FrozenInstanceError):
            Settings().port = 1  # type: ignore[misc]

    def test_image_hosts_add_label_studio_and_fold_case(self):
        settings = Settings(label_studio_url="http://LS.example.com:8080/", allowed_image_hosts=("CDN.example.com",))
        assert settings.image_hosts == frozenset({"ls.example.com:8080", "cdn.example.com"})

    def test_image_hosts_without_label_studio(self):
        assert Settings().image_hosts == frozenset()

    def test_detector_config_slice(self):
        settings = Settings(
            backbone="mobilenet_v3_320_fpn", weights="none", display_threshold=0.3, allow_weights_download=False
        )
        config = settings.detector_config("cpu")
        # the detector returns boxes down to HUA's analysis threshold; SCORE_THRESHOLD filters what is shown
        assert (config.backbone, config.weights, config.analysis_threshold, config.allow_download) == (
            "mobilenet_v3_320_fpn",
            "none",
            0.05,
            False,
        )


class TestBackbone:
    """BACKBONE=auto is chosen per process from the device it runs on; a named backbone everywhere."""

    def test_default_is_auto(self):
        assert Settings.from_env({}).backbone == "auto"

    @pytest.mark.parametrize("kind, backbone", [("cuda", "resnet50_fpn_v2"), ("cpu", "mobilenet_v3_fpn")])
    def test_auto_is_chosen_for_the_device(self, kind, backbone):
        assert Settings.from_env({}).detector_config(kind).backbone == backbone

    def test_a_named_backbone_is_used_on_any_device(self):
        settings = Settings.from_env({"BACKBONE": "mobilenet_v3_320_fpn"})
        assert {settings.detector_config(kind).backbone for kind in ("cuda", "cpu")} == {"mobilenet_v3_320_fpn"}

    def test_jobs_get_auto_and_choose_for_themselves(self):
        assert Settings().to_env()["BACKBONE"] == "auto"


def test_hua_config_slice():
    """Every HUA_* variable reaches model.hua's config."""
    settings = Settings.from_env(
        {
            "HUA_AGGREGATE": "mean",
            "HUA_RETRIEVAL_FRACTION": "0.25",
            "HUA_MIN_CANDIDATES": "8",
            "HUA_CANDIDATES": "30",
            "HUA_OVERLAP_IOU": "0.4",
            "HUA_DIVERSITY": "false",
            "HUA_DIVERSITY_WINDOW": "16",
            "HUA_SCORE_THRESHOLD": "0.1",
            "HUA_MERGE_IOU": "0.8",
            "HUA_CONFIDENT_SCORE": "0.4",
        }
    )
    config = settings.hua_config()
    assert (config.retrieval_fraction, config.min_candidates, config.candidates) == (0.25, 8, 30)
    assert (config.overlap_iou, config.merge_iou, config.diversity, config.diversity_window) == (0.4, 0.8, False, 16)
    assert (config.aggregate, config.confident_score) == ("mean", 0.4)
    detector = settings.detector_config("cpu")  # the analysis threshold ends in the detector
    assert detector.analysis_threshold == 0.1
    assert settings.display_threshold == 0.5  # the display threshold stays the service's own


def test_the_default_ranking_is_the_confirmatory_rules_outcome():
    """docs/method.md section 7: HUA_AGGREGATE stayed sum, HUA_DIVERSITY became on, in the service only."""
    config = Settings.from_env({}).hua_config()
    assert (config.aggregate, config.diversity, config.diversity_window) == ("sum", True, 64)
    assert not HUAConfig().diversity  # HUA as such, the benchmark's `hua` run, has no diversity pass
    assert config == dataclasses.replace(HUAConfig(), diversity=True)  # and no other default differs from the method's


def test_the_default_loss_is_the_papers_synchronic_form():
    loss = Settings().train_config().loss
    assert (loss.name, loss.kind, loss.form) == ("synchronic", "synchronic", "paper")
    assert Settings.from_env({}).train_config().loss == loss
    assert Settings.from_env({"SYNC_FORM": "paper"}).train_config().loss == loss
    assert Settings.from_env({"LOSS": "standard"}).train_config().loss.name == "standard"


def test_loss_and_training_length_settings():
    settings = Settings.from_env(
        {
            "LOSS": "synchronic",
            "SYNC_FORM": "balanced",
            "LOG_VAR_BOUND": "3",
            "TRAIN_ITERATIONS": "50",
            "TRAIN_MIN_ITERATIONS": "20",
            "WARMUP_FRACTION": "0.2",
        }
    )
    train = settings.train_config()
    assert train.loss.name == "synchronic-balanced"
    assert (train.iterations, train.min_iterations, train.warmup_fraction) == (50, 20, 0.2)
    assert settings.detector_config("cpu").log_var_bound == 3.0  # the predictor's, not the loss's
    for bad in ("literal", "default", "Paper"):
        with pytest.raises(SettingsError, match=f"SYNC_FORM must be paper or balanced .*got '{bad}'"):
            Settings.from_env({"SYNC_FORM": bad})
    with pytest.raises(SettingsError, match="LOSS must be synchronic or standard, got 'synchronic-paper'"):
        Settings.from_env({"LOSS": "synchronic-paper"})
    with pytest.raises(SettingsError, match="log_var_bound"):
        Settings.from_env({"LOG_VAR_BOUND": "0"})
