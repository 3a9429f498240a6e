"""Service settings from environment variables (OEE_*) or a .env file, validated once."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from oee_stream.bus import MqttSettings


class Settings(BaseSettings):
    """`OEE_DATABASE_URL` and `OEE_MQTT_URL` unset means: the demo embeds its own servers."""

    model_config = SettingsConfigDict(env_prefix="OEE_", env_file=".env", extra="ignore")

    plant: Path = Field(Path("deploy/demo/plant.yaml"), description="plant model YAML")
    connectors: Path = Field(Path("connectors"), description="folder of connector definition YAML files")
    scenario: Path = Field(Path("simulators/demo.yaml"), description="simulated plant scenario (demo)")
    database_url: str | None = Field(None, description="PostgreSQL/TimescaleDB URI; never logged")
    mqtt_url: str | None = Field(None, description="mqtt://host:port or mqtts://host:port")
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_ca_file: str | None = None
    mqtt_session: str | None = Field(None, description="the engine's persistent MQTT session (client id): the "
                                                       "broker queues the bus for the engine while it is down")
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    anonymous_read: bool = Field(False, description="allow GET routes without an API key (the demo turns it on)")
    tick_s: float = Field(1.0, gt=0, description="how often the engine advances windows and publishes")
    write_every_ticks: int = Field(1, ge=1, description="write results to the database every N ticks")
    data_dir: Path = Field(Path("var"), description="embedded PostgreSQL data, spools, recordings")
    warm_start: bool = Field(True, description="at start, read the engine's last day back from the database so "
                                               "windows go on where the last run left them")
    record_path: Path | None = Field(None, description="append every bus message the engine reads here (replay)")
    retention_samples_days: float = Field(90, ge=0, description="keep raw samples this long (0 = for ever)")
    retention_history_days: float = Field(730, ge=0, description="keep KPI results and state intervals this long "
                                                                 "(0 = for ever)")
    retention_interval_s: float = Field(3600, gt=0, description="how often the retention job runs (plain PostgreSQL)")
    log_format: str = Field("console", description="console | json")
    log_level: str = "info"

    def mqtt(self, url: str) -> MqttSettings:
        """The bus client settings for broker `url` with this installation's credentials and CA."""
        from oee_stream.bus import MqttSettings

        return MqttSettings(url=url, username=self.mqtt_username, password=self.mqtt_password,
                            ca_file=self.mqtt_ca_file)
