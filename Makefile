# Sluice: `make dev` runs the gateway locally with a demo; `make test` runs every test.
# Both set up what they need first (scripts/setup.sh), idempotently.

SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(CURDIR)/node_modules/.bin:$(PATH)
export WRANGLER_SEND_METRICS := false
# worker-build would download these; point it at the pinned local copies instead.
export WASM_BINDGEN_BIN := $(HOME)/.cargo/bin/wasm-bindgen
export ESBUILD_BIN := $(CURDIR)/node_modules/.bin/esbuild
export WASM_OPT_BIN := $(CURDIR)/node_modules/.bin/wasm-opt

SOURCES := $(shell find src web packages -type f -not -path "*/node_modules/*") Cargo.toml Cargo.lock

.PHONY: setup build dev test lint unit e2e js mtls browser bench clean
.DEFAULT_GOAL := dev

setup:
	@./scripts/setup.sh

# Rebuilt only when a source changed, so wrangler's build hook is cheap.
build/index.js: $(SOURCES)
	@./scripts/setup.sh
	@# binaryen.js's wasm-opt (run by worker-build) once aborted on an assertion on a build that
	@# passed when repeated unchanged: one retry, so a flake of the optimiser does not fail a run.
	worker-build --release || { echo "worker-build failed; retrying once"; worker-build --release; }
	@touch build/index.js

build: build/index.js target/site/react/app.js target/site/static/.copied

# The files the gateway serves itself, as static assets (the worker reads them from the ASSETS
# binding, so they are not in the WASM): the widget, the SDK and its types, the OpenAPI document,
# the owner console and the dev demo page.
STATIC_FILES := web/chat.js packages/sdk/index.js packages/sdk/index.d.ts web/openapi.json \
  web/console/index.html web/console/console.js web/console/console.css web/demo.html
target/site/static/.copied: $(STATIC_FILES)
	@mkdir -p target/site/static/console
	@cp web/chat.js web/openapi.json web/demo.html target/site/static/
	@cp packages/sdk/index.js target/site/static/sdk.js
	@cp packages/sdk/index.d.ts target/site/static/sdk.d.ts
	@cp web/console/index.html web/console/console.js web/console/console.css target/site/static/console/
	@printf '.copied\n' > target/site/.assetsignore
	@touch $@

# The React demo page, bundled with @sluice/react (static assets; a dev gateway serves it at /react/).
target/site/react/app.js: web/react-demo/main.jsx web/react-demo/index.html packages/react/index.js packages/sdk/index.js
	@./scripts/setup.sh
	@mkdir -p target/site/react
	@cp web/react-demo/index.html target/site/react/index.html
	node_modules/.bin/esbuild web/react-demo/main.jsx --bundle --minify --format=esm --jsx=automatic \
	  --define:process.env.NODE_ENV='"production"' --outfile=target/site/react/app.js --log-level=warning

dev: setup build
	@./scripts/dev.sh

# Formatting, clippy on the native code and on the wasm32 edge code (warnings are errors), and the
# schema drift check between schema.sql and migrations/. `make test` runs it first.
lint: setup
	cargo fmt --check
	cargo clippy --lib --tests --benches -- -D warnings
	cargo clippy --lib --target wasm32-unknown-unknown -- -D warnings
	python3 scripts/schema-drift.py

unit: setup
	cargo test --lib

e2e: setup build
	cargo test --test e2e

# SDK unit tests (no gateway, no browser).
js:
	node --test tests/js/

# mTLS on the built worker through Miniflare, which takes request.cf per request (wrangler dev cannot).
mtls: setup build
	node --test tests/mtls/

# The widget in headless Chromium against its own wrangler dev.
browser: setup build
	@./scripts/setup-browser.sh
	node tests/browser/run.mjs

test: setup lint build
	cargo test --lib
	node --test tests/js/
	node --test tests/mtls/
	cargo test --test e2e
	@./scripts/setup-browser.sh
	node tests/browser/run.mjs

# The timings against a bare worker in one interleaved run, then what is large in the WASM (twiggy).
bench: setup build
	cargo bench --bench gateway
	@./scripts/size.sh

clean:
	rm -rf build target/wasm32-unknown-unknown .wrangler
