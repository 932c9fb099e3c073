# Conventional entry points over the scripts (docs/operations.md, "Installing"). PREFIX, SYSCONFDIR and DESTDIR are
# honoured: `make install DESTDIR=/tmp/pkg PREFIX=/usr` stages a distribution package.
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
DESTDIR ?=

.PHONY: install uninstall test run

install:
	PREFIX="$(PREFIX)" SYSCONFDIR="$(SYSCONFDIR)" DESTDIR="$(DESTDIR)" scripts/install.sh

# Removes what install put there, except the settings file and the data directory.
uninstall:
	rm -f "$(DESTDIR)$(PREFIX)/bin/brokerd" "$(DESTDIR)$(PREFIX)/bin/brokerctl"
	rm -f "$(DESTDIR)$(PREFIX)/lib/systemd/system/brokerd.service" "$(DESTDIR)$(PREFIX)/lib/systemd/system/brokerd.socket"
	rm -rf "$(DESTDIR)$(PREFIX)/share/doc/brokerd"
	rm -f "$(DESTDIR)$(PREFIX)/share/man/man1/brokerd"*.1 "$(DESTDIR)$(PREFIX)/share/man/man1/brokerctl"*.1
	rm -f "$(DESTDIR)$(PREFIX)/share/bash-completion/completions/brokerd" "$(DESTDIR)$(PREFIX)/share/bash-completion/completions/brokerctl"
	rm -f "$(DESTDIR)$(PREFIX)/share/zsh/site-functions/_brokerd" "$(DESTDIR)$(PREFIX)/share/zsh/site-functions/_brokerctl"
	rm -f "$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/brokerd.fish" "$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/brokerctl.fish"

test:
	swift build --build-tests && swift test --skip-build

run:
	swift run brokerd
