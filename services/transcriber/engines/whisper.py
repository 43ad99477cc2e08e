"""The whisper engine: faster-whisper's model on the utterances voice activity cuts (see
`utterances`), decoded in batches with the encoder's input sized to the audio.

Whisper's encoder takes 30 s of audio whatever it is given: faster-whisper pads every
utterance to that. CTranslate2's encoder takes any length, so a batch here is padded
only to its longest utterance plus `PAD_S` of silence (rounded up to a second): a 3 s
utterance costs a fifth of the encoder's work. With less silence after the speech
whisper loses words (measured on the test speech: `bench/RESULTS.md`).
Partials in a language it knows come from a smaller model (Whisper tiny.en unless
HARK_PARTIAL_MODEL says otherwise): about half the cost of the base model's, as often
like the final (bench/RESULTS.md). Jobs of several sessions go through the model
together: CTranslate2 gains from batches on the CPU as much as on a GPU. Partials
decode greedily; finals with the beam and word timings (greedily where others wait
behind them, `hurry`: the scheduler's choice). A final whose text looks like
a loop (compression ratio over 2.4), or with words aligned to no audio (made up past
the speech), is decoded again the way faster-whisper does it, with its fallbacks;
one whisper is sure of no word of (UNSURE) says nothing.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import (
    get_compression_ratio,
    get_suppressed_tokens,
    merge_punctuations,
)
from threadpoolctl import threadpool_limits

from services.transcriber.engines import (
    DEFAULT_OPTIONS,
    BadSetting,
    Decoded,
    EngineUnavailable,
    Job,
    Options,
    Word,
)
from services.transcriber.engines.model_store import (
    ModelUnavailable,
    default_cache_dir,
    packaged_partial_model,
    resolve,
)
from services.transcriber.engines.segmenter import Audio
from services.transcriber.engines.utterances import UtteranceSession, open_session, vad_model
from shared.config import Settings
from shared.messages import unknown_language

log = logging.getLogger(__name__)

# Silence after the speech in the encoder's input (word errors on the test speech:
# 0.5 s 20.5 %, 1 s 6.8 %, 2 s 1.7 %, 3 s 1.7 %, 30 s 1.1 %). Less for partials, 1 s,
# gave no better latency in the capacity benchmark (its runs vary more than that).
PAD_S = 3.0
# Jobs of several sessions one pass takes at most on a GPU. On the CPU one: a batch
# saves little (offline, one thread: finals nothing, partials 0-24 % in batches of 2-4)
# and each of its jobs waits for the whole (bench/RESULTS.md).
GPU_BATCH = 8
BLAS_THREADS = 1  # numpy's, in a process with a whisper engine (see WhisperEngine)
FRAMES_PER_S = 100  # mel frames
MAX_FRAMES = 3000  # the encoder's own limit: 30 s
MAX_NEW_TOKENS = 220  # half of whisper's 448: no utterance of 25 s says more
# Nor does a second of speech say more than this many tokens (fast English runs at 5-6,
# punctuation counted). A text that loops (3 % of the partials of the test speech, cut
# mid-word) then stops there: unbounded, such a partial took 0.45-0.6 s, five
# times a partial's cost, and held up every result queued behind it.
TOKENS_PER_S = (12, 8)  # finals, partials
TOKENS_SLACK = 16
MAX_LENGTH = 448  # the decoder's positions: prompt and text together
MAX_PROMPT_TOKENS = 223  # faster-whisper keeps the last half of them for earlier text
NO_SPEECH = 0.6  # faster-whisper's thresholds: a text this likely silence, and
LOW_LOGPROB = -1.0  # this unsure, is no text
# Nor is a final none of whose words whisper gives this probability. A finalize just
# after a sentence leaves the last 0.2-0.5 s of its sound to a final of its own: whisper
# wrote "you.", "word." or "over." of it (each word's probability 0.02-0.14), where every
# final of the test speech and dialogue had a word of 0.97 or more.
UNSURE = 0.2
LOOPING = 2.4  # compression ratio past which a text repeats itself
# Words whisper says but aligns to no audio: a final of the project's dialogue, "I can do
# it. I am there the whole day.", came out twice over, the copy's ten words each 0 s long
# at the audio's end (its compression ratio 1.8, under LOOPING). Of 364 words of finals
# of the test speech none other lasted under 60 ms.
UNHEARD_S = 0.02
UNHEARD_RUN = 3  # words running
REPEATED_LETTER = re.compile(r"([^\W\d_])\1{4}")  # a letter five times running
# Punctuation joined to the word beside it: faster-whisper's defaults.
PREPEND = "\"'“¿([{-"
APPEND = "\"'.。,，!！?？:：”)]}、"  # noqa: RUF001


class WhisperEngine:
    """One faster-whisper model (CTranslate2) and one VAD model per actor."""

    name = "whisper"
    blocking = True

    def __init__(
        self, model: str, language: str | None = "en", partial_interval: float = 1.0,
        beam_size: int = 5, threads: int = 0, device: str = "cpu", compute_type: str = "int8",
        batch_size: int | None = None, decoder: str = "batched", end_silence: float = 0.6,
        partial_model: str | None = None,
    ) -> None:  # fmt: skip
        self.language = language
        self.partial_interval = partial_interval
        self.beam_size = beam_size
        self.end_silence = end_silence
        # faster-whisper's own decoding takes one utterance at a time.
        self.batched = decoder == "batched"
        self.model = WhisperModel(model, device=device, compute_type=compute_type,
                                  cpu_threads=threads or min(4, os.cpu_count() or 1))  # fmt: skip
        # numpy's BLAS does only the mel filter bank's small product here, and its idle
        # threads spin for a while after each call: on the cores the decoder needs (a
        # transcriber burnt 1.8 CPU seconds a second of decoding). One thread, in the
        # whole process: the same speed at half the CPU (bench/RESULTS.md, issue 22).
        threadpool_limits(BLAS_THREADS, user_api="blas")
        if batch_size is None:  # where the model runs ("auto" picks)
            batch_size = GPU_BATCH if self.model.model.device == "cuda" else 1
        self.batch_size = batch_size if self.batched else 1
        self._tokenizers: dict[str, Tokenizer] = {}
        self.languages = self._languages_known()
        self._suppress: list[int] | None = None
        self._vad = vad_model()
        # Partials of the sessions whose language it knows (see the module doc).
        self.small = None if partial_model is None else WhisperEngine(
            partial_model, language, partial_interval, threads=threads, device=device,
            compute_type=compute_type, batch_size=batch_size, decoder=decoder)  # fmt: skip
        # Its partials may run beside the finals (see Engine): on the CPU, where the
        # two models' calls share the cores; a GPU batches instead.
        self.partials_apart = self.small is not None and self.model.model.device == "cpu"

    @classmethod
    def from_settings(cls, settings: Settings) -> WhisperEngine:
        cache = Path(settings.cache_dir) if settings.cache_dir else default_cache_dir()
        try:
            model = resolve(settings.whisper_model, cache)
        except ModelUnavailable as exc:
            raise EngineUnavailable(str(exc)) from None
        return cls(
            model, settings.language or None, settings.partial_interval,
            threads=settings.whisper_threads or cpu_share(settings.transcribers),
            device=settings.device, compute_type=settings.compute_type,
            batch_size=settings.batch_size, decoder=settings.whisper_decoder,
            end_silence=settings.end_silence, partial_model=_partial_model(settings, cache),
        )  # fmt: skip

    def open_session(
        self, session_id: str, encoding: str, sample_rate: int,
        options: Options = DEFAULT_OPTIONS,
    ) -> UtteranceSession:  # fmt: skip
        """A session; BadSetting for a language this model does not know."""
        language = options.language
        if language is not None and language not in self.languages:
            raise BadSetting(unknown_language(language, self.languages))
        return open_session(self, self._vad, encoding, sample_rate, self.end_silence, options)

    def transcribe(
        self, audio: Audio, final: bool, options: Options = DEFAULT_OPTIONS, hurry: bool = False
    ) -> Decoded:
        """Text of the audio, and for a final its words (times relative to the audio)."""
        return self.decode([audio], final, [options], hurry)[0]

    def run_batch(self, jobs: Sequence[Job]) -> list[Any]:
        """Decode several sessions' jobs at once: the finals with the beam together, the
        hurried ones together, the partials together (a greedy search cannot share a
        batch with a beam search)."""
        out: list[Any] = [None] * len(jobs)
        for final, hurry in ((True, False), (True, True), (False, False)):
            picked = [i for i, job in enumerate(jobs)
                      if job.final is final and (final and job.hurried) is hurry]  # fmt: skip
            if picked:
                audio = [jobs[i].audio for i in picked]
                options = [jobs[i].options for i in picked]
                decoded = self.decode(audio, final, options, hurry)
                for i, one in zip(picked, decoded, strict=True):
                    out[i] = one
        return out

    def decode(
        self, audio: Sequence[Audio | None], final: bool, options: Sequence[Options] | None = None,
        hurry: bool = False,
    ) -> list[Decoded]:  # fmt: skip
        """Texts (and for finals words) of utterances, in one pass through the model,
        each with its session's options (language, prompt, hotwords); partials by the
        smaller model where it knows their language, and by this one where it heard
        nothing (tiny.en says nothing of a sentence's first 0.5-0.9 s more often than
        base: an utterance's first partial then came up to 2.3 s into the speech).
        Finals with the beam search, unless `hurry` (others wait behind them): greedy,
        in 0.7 of the time (word errors on the test speech 3.1 % instead of 2.6 %)."""
        options = options or [DEFAULT_OPTIONS] * len(audio)
        if final or self.small is None or not all(map(self._small_knows, options)):
            return self._decode(audio, final, options, hurry)
        out = self.small.decode(audio, final, options)
        if again := [i for i, decoded in enumerate(out) if not decoded.text]:
            redone = self._decode([audio[i] for i in again], final, [options[i] for i in again])
            for i, decoded in zip(again, redone, strict=True):
                out[i] = decoded
        return out

    def _decode(
        self, audio: Sequence[Audio | None], final: bool, options: Sequence[Options],
        hurry: bool = False,
    ) -> list[Decoded]:  # fmt: skip
        """`decode` by this model."""
        if not self.batched:
            return [self._fallback(a, final, o) for a, o in zip(audio, options, strict=True)]
        extractor = self.model.feature_extractor
        features = [extractor(a if a is not None else np.zeros(0, np.float32))[:, :-1]
                    for a in audio]  # fmt: skip
        longest = max(f.shape[1] for f in features)
        frames = min(MAX_FRAMES, math.ceil(longest / FRAMES_PER_S + PAD_S) * FRAMES_PER_S)
        batch = np.stack([_fit(f, frames) for f in features])
        # CTranslate2 decodes a batch only where every prompt's start token sits at the
        # same place: sessions with earlier text (prompt, hotwords) of different lengths
        # are decoded in groups, their rows cut from the batch's encoder output.
        groups = self._groups(options)
        per_s = TOKENS_PER_S[0] if final else TOKENS_PER_S[1]
        most = min(MAX_NEW_TOKENS, math.ceil(longest / FRAMES_PER_S * per_s) + TOKENS_SLACK)
        encoded = self.model.model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(batch)),
            # Rows of a batch are cut apart for word timings or groups: on the host.
            to_cpu=(final or len(groups) > 1) and len(features) > 1
            and self.model.model.device == "cuda",
        )  # fmt: skip
        languages = self._languages(encoded, options)
        tokenizers = [self._tokenizer(language) for language in languages]
        prompts = [self._prompt(tok, o) for tok, o in zip(tokenizers, options, strict=True)]
        results: list[Any] = [None] * len(features)
        for rows in groups:
            part = encoded if len(groups) == 1 else _rows(encoded, rows)
            mine = [prompts[i] for i in rows]
            generated = self.model.model.generate(
                part, mine, beam_size=self.beam_size if final and not hurry else 1,
                max_length=min(MAX_LENGTH, max(map(len, mine)) + most),
                return_scores=True, return_no_speech_prob=True, suppress_blank=True,
                suppress_tokens=self._suppress,
            )  # fmt: skip
            for i, result in zip(rows, generated, strict=True):
                results[i] = result
        out: list[Decoded] = []
        texts: list[list[int]] = []
        for result, tokenizer, o, language in zip(results, tokenizers, options, languages,
                                                   strict=True):  # fmt: skip
            tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
            if result.no_speech_prob > NO_SPEECH and result.scores[0] < LOW_LOGPROB:
                tokens = []  # silence, said with little conviction: say nothing
            texts.append(tokens)
            detected = language if o.language == "auto" else None
            out.append(Decoded(tokenizer.decode(tokens).strip(), [], detected))
        if not final:  # a partial that loops says nothing worth showing
            return [d._replace(text="") if _looping(d.text) else d for d in out]
        again = {i for i, d in enumerate(out) if d.text and get_compression_ratio(d.text) > LOOPING}
        for i in again:
            texts[i] = []
        frames_of = [min(frames, f.shape[1]) for f in features]
        for i, words in enumerate(self._words(tokenizers, texts, encoded, frames_of)):
            if _unheard(words):
                again.add(i)
            elif words and max(p for _, _, _, p in words) < UNSURE:
                log.info("a final whisper was sure of no word of (%r) says nothing",
                         out[i].text[:40])  # fmt: skip
                out[i] = out[i]._replace(text="")
            elif words:
                out[i] = out[i]._replace(words=words)
        for i in sorted(again):
            log.info("a final looped or ran past the speech (%r...): decoded again with "
                     "fallbacks", out[i].text[:40])  # fmt: skip
            out[i] = self._fallback(audio[i], True, options[i])
        return out

    def _small_knows(self, options: Options) -> bool:
        """Whether the smaller model knows the language a session's partials are in."""
        assert self.small is not None
        return (options.language or self.language or "en") in self.small.languages

    def _languages_known(self) -> tuple[str, ...]:
        """The codes a session may ask for: those this model has a token for (faster-
        whisper lists large-v3's `yue` for every model), in the tokenizer's order (most
        spoken first: en, zh, de, ...), and "auto" where it can detect them."""
        token = self.model.hf_tokenizer.token_to_id
        ids = {code: token(f"<|{code}|>") for code in self.model.supported_languages}
        known = sorted((code for code, id_ in ids.items() if id_ is not None), key=ids.__getitem__)
        return (*known, *(("auto",) if self.model.model.is_multilingual else ()))

    def _languages(self, encoded: Any, options: Sequence[Options]) -> list[str]:
        """The language each row is decoded in: its session's, the engine's, or for
        "auto" the one whisper hears in it (one step of the decoder, for the batch)."""
        default = self.language or "en"
        languages = [o.language or default for o in options]
        if "auto" in languages:
            heard = self.model.model.detect_language(encoded)
            languages = [ranked[0][0][2:-2] if language == "auto" else language
                         for language, ranked in zip(languages, heard, strict=True)]  # fmt: skip
        return languages

    def _groups(self, options: Sequence[Options]) -> list[list[int]]:
        """Rows whose prompts put the start token at the same place (see decode)."""
        tokenizer = self._tokenizer(self.language or "en")  # the language moves nothing
        groups: dict[int, list[int]] = {}
        for i, o in enumerate(options):
            start = self._prompt(tokenizer, o).index(tokenizer.sot)
            groups.setdefault(start, []).append(i)
        return list(groups.values())

    def _prompt(self, tokenizer: Tokenizer, options: Options) -> list[int]:
        """The decoder's prompt: the session's earlier text and hotwords (as
        faster-whisper builds it), then the language and task."""
        earlier = tokenizer.encode(" " + options.prompt.strip()) if options.prompt.strip() else []
        prompt: list[int] = self.model.get_prompt(tokenizer, earlier[-MAX_PROMPT_TOKENS:],
                                     without_timestamps=True,
                                     hotwords=options.hotwords.strip() or None)  # fmt: skip
        return prompt

    def _words(
        self, tokenizers: list[Tokenizer], texts: list[list[int]], encoded: Any, frames: list[int]
    ) -> list[list[Word]]:
        """Word timings of each text, by whisper's cross-attention (as faster-whisper)."""
        words: list[list[Word]] = []
        for i, tokens in enumerate(texts):
            if not tokens:
                words.append([])
                continue
            one = encoded if len(texts) == 1 else _row(encoded, i)
            alignment = self.model.find_alignment(tokenizers[i], [tokens], one, frames[i])[0]
            merge_punctuations(alignment, PREPEND, APPEND)
            words.append([(w["word"].strip(), round(float(w["start"]), 3),
                           round(float(w["end"]), 3), round(float(w["probability"]), 3))
                          for w in alignment if w["word"].strip()])  # fmt: skip
        return words

    def _fallback(self, audio: Audio | None, final: bool, session: Options) -> Decoded:
        """faster-whisper's own decoding (30 s input, temperature fallbacks; a partial
        greedy, at one temperature, without timestamps)."""
        options: dict[str, Any] = (
            {"word_timestamps": True} if final else {"temperature": 0.0, "without_timestamps": True}
        )
        language = session.language or self.language
        segments, info = self.model.transcribe(
            audio if audio is not None else np.zeros(0, np.float32),
            language=None if language == "auto" else language,
            initial_prompt=session.prompt.strip() or None,
            hotwords=session.hotwords.strip() or None,
            beam_size=self.beam_size if final else 1, vad_filter=False,
            condition_on_previous_text=False, **options,
        )  # fmt: skip
        texts: list[str] = []
        words: list[Word] = []
        for segment in segments:
            texts.append(segment.text)
            for w in segment.words or []:
                words.append((w.word.strip(), round(w.start, 3), round(w.end, 3),
                              round(w.probability, 3)))  # fmt: skip
        detected = info.language if language == "auto" else None
        return Decoded("".join(texts).strip(), words, detected)

    def _tokenizer(self, language: str) -> Tokenizer:
        """The tokenizer of `language` (its start sequence names the language)."""
        tokenizer = self._tokenizers.get(language)
        if tokenizer is None:
            model = self.model
            tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual,
                                  task="transcribe", language=language)  # fmt: skip
            self._tokenizers[language] = tokenizer
            if self._suppress is None:  # the same for every language
                self._suppress = get_suppressed_tokens(tokenizer, [-1])
        return tokenizer


def _partial_model(settings: Settings, cache: Path) -> str | None:
    """The partials' model (see Settings.partial_model); None: the finals' model. Without
    its package, partials come from the finals' model, a warning says so."""
    if settings.partial_model == "main":
        return None
    try:
        if settings.partial_model:
            return resolve(settings.partial_model, cache)
        return str(packaged_partial_model())
    except ModelUnavailable as exc:
        if settings.partial_model:
            raise EngineUnavailable(str(exc)) from None
        log.warning("%s; partials come from the finals' model (slower)", exc)
        return None


def cpu_share(transcribers: int) -> int:
    """Threads for one transcriber's model: the cores shared among the transcribers, so
    two do not fight over two cores."""
    return max(1, (os.cpu_count() or 1) // max(1, transcribers))


def _unheard(words: Sequence[Word]) -> bool:
    """Whether a final's words hold a run of UNHEARD_RUN that take no time: text whisper
    made up past the speech, most often a copy of what it just said."""
    run = 0
    for _, start, end, _ in words:
        run = run + 1 if end - start < UNHEARD_S else 0
        if run >= UNHEARD_RUN:
            return True
    return False


def _looping(text: str) -> bool:
    """Whether a partial's text repeats itself. Its compression ratio says so only of a
    long one; the first second of an utterance, decoded, came out as "ZZZZZZZZZZZZ",
    "Rrrrrrrrrrrrr" or "Zem... Zem... Zem... Zem..." in 8 or 9 of some 490 partials of a
    capacity run (none of them right): a word three times running, a letter five. And
    three words or more said again at once, or a text that starts over (what whisper
    makes up past the speech, see UNHEARD_S: the sentence again, cut where the partial's
    tokens end)."""
    if get_compression_ratio(text) > LOOPING:
        return True
    words = re.findall(r"\w+", text.lower())
    if any(a == b == c for a, b, c in zip(words, words[1:], words[2:], strict=False)):
        return True
    for size in range(3, len(words) // 2 + 1):
        if any(words[i : i + size] == words[i + size : i + 2 * size]
               for i in range(len(words) - 2 * size + 1)):  # fmt: skip
            return True
    if any(words[start:] == words[: len(words) - start] for start in range(3, len(words) - 2)):
        return True
    return REPEATED_LETTER.search(text) is not None


def _fit(features: np.ndarray[Any, Any], frames: int) -> np.ndarray[Any, Any]:
    """Mel features cut or padded with zeros (as faster-whisper pads them) to `frames`."""
    if features.shape[1] >= frames:
        return features[:, :frames]
    return np.pad(features, ((0, 0), (0, frames - features.shape[1])))


def _row(encoded: Any, i: int) -> Any:
    """Row `i` of a batch's encoder output, as a batch of one."""
    return _rows(encoded, [i])


def _rows(encoded: Any, rows: list[int]) -> Any:
    """Some rows of a batch's encoder output, as a batch."""
    array = np.asarray(encoded)
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(array[rows]))
