"""Fixtures for end-to-end tests: a `hark up` tree per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.tree import Tree

TreeFactory = Callable[..., Awaitable[Tree]]


@pytest.fixture
async def start_tree(tmp_path: Path) -> AsyncIterator[TreeFactory]:
    """Start `hark up` trees; every one still running at the end is stopped with SIGINT."""
    trees: list[Tree] = []

    async def start(**kwargs: Any) -> Tree:
        tree = Tree(tmp_path / f"hark-{len(trees)}.log", **kwargs)
        trees.append(tree)
        await tree.start()
        return tree

    yield start
    for tree in trees:
        try:
            await tree.stop()
        finally:
            print(f"--- log of {tree.log_path.name} ---\n{tree.log_tail()}")


@pytest.fixture
async def tree(start_tree: TreeFactory, redis_url: str) -> Tree:
    """A tree of 2 transcribers on the test Redis, so the test can read the audit stream."""
    return await start_tree(redis_url=redis_url)
