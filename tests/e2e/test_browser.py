"""The web page in headless Chromium with a fake microphone, against a real tree.

Chromium comes from Debian's `chromium` package. When it is missing, the test
installs it (apt-get, as root) rather than skipping: the page is what a new user
sees first, so CI must exercise it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import struct
import subprocess
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright, expect

from tests import wer
from tests.conftest import TreeFactory
from tests.e2e.test_real_speech import BOUND
from tests.speech import spoken

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

CHROMIUM_FLAGS = [
    "--use-fake-device-for-media-stream",  # a generated tone instead of a microphone
    "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
    "--disable-gpu",
    "--disable-background-networking",  # this machine's network is closed; don't try
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    """Debian's chromium, installed now if it is missing."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail("chromium is missing and cannot be installed here: run "
                    "`sudo apt-get install -y chromium` (Debian) and test again")  # fmt: skip
    print("installing Debian's chromium for the browser test (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.fail("apt-get installed chromium but it is not on PATH")
    return found


def _text(path: Path) -> str:
    return Path(path).read_text()


@pytest.fixture(scope="module")
def chromium() -> str:
    return chromium_path()


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield browser
        await browser.close()


async def test_page_streams_the_microphone_and_shows_live_transcripts(
    start_tree: TreeFactory, redis_url: str, browser: Browser
) -> None:
    tree = await start_tree(redis_url=redis_url)
    page = await browser.new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    await page.goto(f"http://127.0.0.1:{tree.port}/")
    await expect(page.locator("#state")).to_have_text("idle")

    await page.select_option("#language", "de")  # the engine's language, for the session
    await page.click("#start")
    await expect(page.locator("#state")).to_have_text("streaming", timeout=20_000)
    await expect(page.locator("#heard")).to_have_text("de")
    assert await page.locator("#language").is_disabled()  # fixed while the session lasts
    # Each 100 ms frame of 16 kHz 16-bit mono is 3200 bytes; 5 finals is half a second.
    finals = page.locator("#transcripts li")
    await expect(finals.nth(4)).to_be_attached(timeout=30_000)
    for text in await finals.all_inner_texts():
        assert text.startswith("Transcribed: ") and text.endswith("(size: 3200 bytes)"), text
    assert int(await page.inner_text("#acks")) >= 5
    assert await page.locator("#errors li").count() == 0, await page.inner_text("#errors")
    # The fake microphone beeps now and then (silence between): the level meter moves
    # with a beep, so wait for one rather than reading the meter at a random moment.
    await page.wait_for_function("document.getElementById('level').value > 0.01", timeout=10_000)
    assert (await page.inner_text("#actor")).startswith("transcriber-")
    await expect(page.locator("#notes li").first).to_contain_text("connected: session")

    await page.click("#stop")
    await expect(page.locator("#state")).to_have_text("closed", timeout=20_000)
    sent = int(await page.inner_text("#sent"))
    assert int(await page.inner_text("#acks")) == sent  # every frame sent was acked
    assert int(await page.inner_text("#finals")) == sent
    summary = await page.inner_text("#summary")
    assert summary == f"Closed: {sent} chunks, {sent} finals, transcript complete.", summary
    # The transcript downloads: SRT cues timed from the finals (the mock's: their chunks).
    async with page.expect_download() as download:
        await page.click("#save-srt")
    srt = _text(await (await download.value).path())
    assert srt.startswith("1\n00:00:00,000 --> 00:00:00,100\nTranscribed: "), srt[:200]
    assert srt.count(" --> ") == sent
    async with page.expect_download() as download:
        await page.click("#save-vtt")
    vtt = _text(await (await download.value).path())
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:00.100\n"), vtt[:200]
    async with page.expect_download() as download:
        await page.click("#save-txt")
    lines = _text(await (await download.value).path()).splitlines()
    assert lines == await finals.all_inner_texts()
    assert not [line for line in console if line.startswith("error")], console
    if shot_dir := os.environ.get("HARK_SCREENSHOTS"):
        await page.screenshot(path=os.path.join(shot_dir, "web-page.png"), full_page=True)


async def test_page_resumes_after_the_gateway_is_killed_and_loses_no_audio(
    start_tree: TreeFactory, redis_url: str, browser: Browser
) -> None:
    tree = await start_tree(redis_url=redis_url)
    gateway = await tree.actor("gateway")
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{tree.port}/")
    await page.click("#start")
    finals = page.locator("#transcripts li")
    await expect(finals.nth(4)).to_be_attached(timeout=30_000)

    os.kill(gateway["pid"], signal.SIGKILL)
    resumed = page.locator("#notes li", has_text="resumed after seq")
    await expect(resumed).to_be_attached(timeout=30_000)
    count_then = await finals.count()
    await expect(finals.nth(count_then + 4)).to_be_attached(timeout=30_000)  # still streaming

    await page.click("#stop")
    await expect(page.locator("#state")).to_have_text("closed", timeout=20_000)
    sent = int(await page.inner_text("#sent"))
    seqs = [int(s) for s in await finals.evaluate_all("items => items.map(i => i.dataset.seq)")]
    assert seqs == list(range(1, sent + 1)), "a frame was lost or transcribed twice"
    assert await page.locator("#errors li").count() == 0, await page.inner_text("#errors")
    assert (await tree.actor("gateway"))["pid"] != gateway["pid"]


async def test_page_sends_opus_from_the_browsers_recorder_and_real_speech_comes_back(
    start_tree: TreeFactory, redis_url: str, chromium: str, tmp_path: Path
) -> None:
    # Chromium's fake microphone plays a recording of real speech, once.
    speech = spoken([1, 3, 4], pause_s=1.0, tail_s=2.0)
    wav = tmp_path / "speech.wav"
    with wave.open(str(wav), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(speech.rate)
        out.writeframes(speech.pcm.astype("<i2").tobytes())
    tree = await start_tree(redis_url=redis_url, transcribers=1, env={"HARK_ENGINE": "whisper"})
    flags = [*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={wav}%noloop"]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=flags)
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{tree.port}/")
        await page.select_option("#send", "opus")
        await page.click("#start")
        await expect(page.locator("#state")).to_have_text("streaming", timeout=20_000)
        await expect(page.locator("#notes li").first).to_contain_text("webm")
        finals = page.locator("#transcripts li")
        await expect(finals.nth(2)).to_be_attached(timeout=40_000)  # a final a sentence
        await page.click("#stop")
        await expect(page.locator("#state")).to_have_text("closed", timeout=20_000)
        said = " ".join(await finals.all_inner_texts())
        summary = await page.inner_text("#summary")
        errors = await page.locator("#errors li").all_inner_texts()
        await browser.close()
    assert not errors, errors
    assert "transcript complete" in summary, summary
    rate = wer.errors(speech.text, said) / len(wer.normalise(speech.text))
    print(f"Opus from the page: WER {rate:.3f}: {said!r}")
    assert rate <= BOUND, said
    # What went over the wire: Opus, not PCM (an eighth of its bytes, about).
    sent = (await tree.gateway_stats(lambda stats: True))["audio_bytes"]
    print(f"{sent} bytes of Opus for {speech.seconds:.1f} s: {sent / (len(speech.pcm) * 2):.3f} "
          "of the 16 kHz PCM")  # fmt: skip
    assert sent < len(speech.pcm) * 2 / 4


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk comes first
    return width, height


async def test_dashboard_shows_the_tree_live_and_its_buttons_act(
    start_tree: TreeFactory, redis_url: str, browser: Browser
) -> None:
    tree = await start_tree(redis_url=redis_url)
    page = await browser.new_page(viewport={"width": 1200, "height": 400})
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    await page.goto(f"{tree.status_url}/")
    await expect(page.locator("#tree-state")).to_have_text("OK", timeout=10_000)
    rows = page.locator("#actors tbody tr")
    await expect(rows).to_have_count(3)  # two transcribers, the gateway (Redis is the test's)
    victim = page.locator('tr[data-actor="transcriber-0"]')
    await expect(victim.locator("td").nth(1)).to_have_text("RUNNING")
    before = await tree.actor("transcriber-0")
    await expect(victim.locator("td").nth(2)).to_have_text(str(before["pid"]))
    # Its lag, from its heartbeat: none while idle; the gateway has none to report.
    await expect(victim.locator("td").nth(8)).to_have_text("0 ms", timeout=10_000)
    await expect(page.locator('tr[data-actor="gateway"] td').nth(8)).to_have_text("-")
    shot_before = await page.locator("#actors").screenshot()

    os.kill(before["pid"], signal.SIGKILL)
    # The page follows: a new pid, one restart, RUNNING again, with no reload.
    await expect(victim.locator("td.restarts")).to_have_text("1", timeout=15_000)
    after = await tree.actor("transcriber-0")
    await expect(victim.locator("td").nth(2)).to_have_text(str(after["pid"]), timeout=5_000)
    await expect(victim.locator("td").nth(1)).to_have_text("RUNNING", timeout=15_000)
    await expect(victim.locator("td").nth(5)).to_have_text("killed by SIGKILL")
    shot_after = await page.locator("#actors").screenshot()
    width, height = _png_size(shot_after)
    assert width >= 1000 and height >= 100, (width, height)  # a whole table, three rows
    assert shot_after != shot_before  # what changed is on screen, not only in the DOM

    # The drain button asks for the admin token (`hark up` made one up: the test reads it
    # where the `hark` commands do), then marks it, and the API agrees.
    token = tree.admin_token
    assert token is not None
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept(token)))
    await victim.get_by_role("button", name="drain").click()
    await expect(victim.locator(".draining")).to_have_text("draining", timeout=10_000)
    assert (await tree.actor("transcriber-0"))["draining"] is True
    await expect(page.locator("#message")).to_have_text("drain transcriber-0: done")
    if shot_dir := os.environ.get("HARK_SCREENSHOTS"):
        await page.screenshot(path=os.path.join(shot_dir, "dashboard.png"), full_page=True)
    # The one 401 is the drain before the token was given (the page then asks for it).
    errors = [line for line in console if line.startswith("error")]
    assert errors == ["error: Failed to load resource: the server responded with a status of "
                      "401 (Unauthorized)"], console  # fmt: skip
