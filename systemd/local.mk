# systemd units, the sysusers.d account and the example configuration.
#
# vhdnbd.service is made from vhdnbd.service.in by make, not configure, so
# that ExecStart= follows $(sbindir) and $(sysconfdir) as make sees them:
# "make install prefix=/usr" writes a unit naming /usr/sbin/vhdnbd.  The copy
# in the build tree (for the tests) uses the configured paths; the installed
# one is written afresh by install-data-local.  Type= is "notify" only when
# this build sends sd_notify readiness.
if HAVE_LIBSYSTEMD
SYSTEMD_SERVICE_TYPE = notify
else
SYSTEMD_SERVICE_TYPE = simple
endif
if INSTALL_SYSTEMD_UNITS
SYSTEMD_INSTALL_UNITS = yes
dist_systemdsystemunit_DATA = systemd/vhdnbd.socket
# systemd-sysusers reads PREFIX/lib/sysusers.d for /usr and /usr/local.
sysusersdir = $(prefix)/lib/sysusers.d
dist_sysusers_DATA = systemd/sysusers.d/vhdnbd.conf
else
SYSTEMD_INSTALL_UNITS = no
EXTRA_DIST += systemd/vhdnbd.socket systemd/sysusers.d/vhdnbd.conf
endif

vhdnbdconfdir = $(sysconfdir)/vhdnbd
dist_vhdnbdconf_DATA = systemd/vhdnbd.conf.example

noinst_DATA = systemd/vhdnbd.service
EXTRA_DIST += systemd/vhdnbd.service.in
CLEANFILES += systemd/vhdnbd.service

# Writes the service unit for the current paths to stdout.
SYSTEMD_SERVICE_GEN = sed \
	-e 's|@sbindir[@]|$(sbindir)|g' \
	-e 's|@sysconfdir[@]|$(sysconfdir)|g' \
	-e 's|@SERVICE_TYPE[@]|$(SYSTEMD_SERVICE_TYPE)|g' \
	$(srcdir)/systemd/vhdnbd.service.in

systemd/vhdnbd.service: systemd/vhdnbd.service.in Makefile
	$(AM_V_GEN)$(MKDIR_P) systemd && $(SYSTEMD_SERVICE_GEN) >$@.tmp && \
	if grep -n '@[a-zA-Z_]*@' $@.tmp >&2; then \
	  echo "$@: unsubstituted variables left" >&2; rm -f $@.tmp; exit 1; \
	fi && mv $@.tmp $@

install-data-local:
	@if test '$(SYSTEMD_INSTALL_UNITS)' = yes; then \
	  echo " $(MKDIR_P) '$(DESTDIR)$(systemdsystemunitdir)'"; \
	  $(MKDIR_P) '$(DESTDIR)$(systemdsystemunitdir)' || exit 1; \
	  echo " GEN '$(DESTDIR)$(systemdsystemunitdir)/vhdnbd.service'"; \
	  $(SYSTEMD_SERVICE_GEN) >'$(DESTDIR)$(systemdsystemunitdir)/vhdnbd.service' && \
	  chmod 644 '$(DESTDIR)$(systemdsystemunitdir)/vhdnbd.service'; \
	fi
uninstall-local:
	@if test '$(SYSTEMD_INSTALL_UNITS)' = yes; then \
	  echo " rm -f '$(DESTDIR)$(systemdsystemunitdir)/vhdnbd.service'"; \
	  rm -f '$(DESTDIR)$(systemdsystemunitdir)/vhdnbd.service'; \
	fi

TESTS += tests/interop/test-systemd-units.sh
EXTRA_DIST += tests/interop/test-systemd-units.sh
