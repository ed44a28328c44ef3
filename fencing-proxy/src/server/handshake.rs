//! One client's handshake: the NBD negotiation driven over the socket,
//! export selection, and binding a connection to a token (the lease
//! service's check, then a durable raise) before it may write.

use super::fencing::{durable, durable_raise, log_unconfirmed, unconfirmed_refusal};
use super::transmission::transmission;
use super::*;
use crate::admission::{Binding, Checked};

/// `EXPORT@TOKEN` → (`EXPORT`, token); `EXPORT` → (`EXPORT`, none).
fn split_name(name: &str) -> Result<(&str, Option<u64>), OptionError> {
    match name.rsplit_once('@') {
        None => Ok((name, None)),
        Some((export, token)) => match token.parse::<u64>() {
            Ok(token) if token > 0 => Ok((export, Some(token))),
            _ => Err(OptionError::new(
                RepError::Invalid,
                format!("{token:?} is not a fencing token: connect to EXPORT@TOKEN with the decimal token of your lease, or to EXPORT for read-only access"),
            )),
        },
    }
}

/// The client's binding after a successful `GO`.
pub(super) struct Bound {
    pub(super) export: Rc<ExportRt>,
    pub(super) token: Option<u64>,
    pub(super) backend: Backend,
}

/// Writes what the handshake queued; a client that reads none of it for
/// `wait_max` is gone.
async fn write_out(
    stream: &mut WriteHalf,
    out: &mut Vec<u8>,
    wait_max: Duration,
) -> io::Result<()> {
    if !out.is_empty() {
        stream.write_all(out, Some(wait_max)).await?;
        out.clear();
    }
    Ok(())
}

pub(super) async fn serve(stream: TcpStream, exports: Rc<Exports>) -> io::Result<()> {
    let limits = exports.limits;
    // The whole handshake, not each read: a client trickling bytes gets no
    // more time than a silent one.
    let deadline_ms = monotonic_ms().saturating_add(millis(limits.handshake_timeout));
    let wait_max = limits.handshake_timeout;
    stream.set_nodelay(true)?;
    let (mut input, mut output) = split(stream);
    let mut handshake = Handshake::new(exports.nbd);
    let mut out = Vec::new();
    // Small: thousands of connections may sit in the handshake at once.
    // Transmission allocates its own larger buffer.
    let mut buf = vec![0u8; HANDSHAKE_READ_CHUNK];
    handshake.poll_transmit(&mut out);
    write_out(&mut output, &mut out, wait_max).await?;
    let mut bound: Option<Bound> = None;
    loop {
        let n = input
            .read(
                &mut buf,
                deadline_ms,
                "no complete NBD handshake within proxy.handshake_timeout",
            )
            .await?;
        if n == 0 {
            return Ok(());
        }
        handshake.handle_input(&buf[..n]);
        let mut ready = false;
        while let Some(event) = handshake.poll_event() {
            match event {
                Event::Export { name, go } => {
                    let answer = select(&exports, &name, go).await;
                    let answer = match answer {
                        Ok((info, binding)) => {
                            if let Some(binding) = binding {
                                if let Some(old) = bound.replace(binding) {
                                    old.backend.close().await;
                                }
                            }
                            Ok(info)
                        }
                        Err(e) => Err(e),
                    };
                    handshake.answer_export(answer);
                }
                Event::List => {
                    let list = exports
                        .names
                        .iter()
                        .map(|name| {
                            let export = &exports.by_name[name];
                            ExportEntry {
                                name: name.clone(),
                                description: format!(
                                    "tenant {} resource {}; connect as {name}@TOKEN to write",
                                    export.config.tenant, export.config.resource
                                ),
                            }
                        })
                        .collect();
                    handshake.answer_list(Ok(list));
                }
                Event::Ready { .. } => ready = true,
                Event::Aborted => {
                    handshake.poll_transmit(&mut out);
                    write_out(&mut output, &mut out, wait_max).await?;
                    return Ok(());
                }
                Event::Failed(e) => {
                    handshake.poll_transmit(&mut out);
                    let _ = write_out(&mut output, &mut out, wait_max).await;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                }
            }
        }
        handshake.poll_transmit(&mut out);
        write_out(&mut output, &mut out, wait_max).await?;
        if ready {
            break;
        }
    }
    let Some(bound) = bound else {
        // Ready always follows an accepted GO / EXPORT_NAME.
        return Err(io::Error::other("handshake ended without an export"));
    };
    drop(buf);
    transmission((input, output), handshake, bound, exports, out).await
}

/// Answers the selection of `name`; for `GO`, binds the connection.
async fn select(
    exports: &Exports,
    name: &str,
    go: bool,
) -> Result<(ExportInfo, Option<Bound>), OptionError> {
    let (export_name, token) = split_name(name)?;
    let Some(export) = exports.by_name.get(export_name) else {
        return Err(OptionError::new(
            RepError::Unknown,
            format!(
                "no export {export_name:?}; exports: {}",
                exports.names.join(", ")
            ),
        ));
    };
    if let Some(token) = token {
        if let Err(refusal) = bind_token(exports, export, token, go).await {
            export
                .metrics()
                .handshakes_refused
                .fetch_add(1, Ordering::Relaxed);
            warn!(export = %export.config.name, token, reason = %refusal.message, "handshake refused");
            return Err(refusal);
        }
    }
    let backend = if go || matches!(export.backend, BackendSpec::Nbd { .. }) {
        Some(open_backend(exports, export).await.map_err(|e| {
            error!(export = %export.config.name, error = %e, "backend unavailable");
            OptionError::new(
                RepError::Unknown,
                format!("export {export_name}: backend unavailable: {e}"),
            )
        })?)
    } else {
        None
    };
    let size = match (&backend, export.file_size) {
        (Some(b), _) => b.size(),
        (None, Some(size)) => size,
        (None, None) => unreachable!("nbd backends are opened above"),
    };
    let can_trim = backend.as_ref().is_none_or(Backend::can_trim);
    let mut flags = tf::SEND_FLUSH | tf::SEND_FUA;
    if can_trim {
        flags |= tf::SEND_TRIM | tf::SEND_WRITE_ZEROES;
    }
    if token.is_none() {
        flags |= tf::READ_ONLY;
    }
    if matches!(export.backend, BackendSpec::File { .. }) {
        // One file: a flush on any connection covers every connection's
        // completed writes.
        flags |= tf::CAN_MULTI_CONN;
    }
    let info = ExportInfo::new(size, flags);
    match backend {
        Some(backend) if go => Ok((
            info,
            Some(Bound {
                export: export.clone(),
                token,
                backend,
            }),
        )),
        Some(backend) => {
            backend.close().await;
            Ok((info, None))
        }
        None => Ok((info, None)),
    }
}

async fn open_backend(exports: &Exports, export: &ExportRt) -> io::Result<Backend> {
    let pool = exports.pool.clone();
    match &export.backend {
        BackendSpec::File { .. } => {
            let size = export.file_size.expect("file backends are prepared");
            let shared = export
                .shared_file
                .clone()
                .expect("file backends are prepared");
            Ok(Backend::File(FileBackend::new(
                shared,
                size,
                pool,
                exports.file_io.clone(),
            )))
        }
        BackendSpec::Nbd { addr, export: name } => {
            Ok(Backend::Nbd(NbdUpstream::connect(addr, name, pool).await?))
        }
    }
}

/// Decides whether `token` may write to `export`; raises the durable fence
/// first when it is above it and `go` is set. Awaits and calls what the
/// export's [`Admission`] asks for (confirmation, the lease service, a
/// durable raise), nothing more.
async fn bind_token(
    exports: &Exports,
    export: &Rc<ExportRt>,
    token: u64,
    go: bool,
) -> Result<(), OptionError> {
    let mut nudged = false;
    let mut binding = export
        .admission
        .borrow()
        .bind(token, durable(exports, export), go);
    loop {
        match binding {
            Binding::Bound { unconfirmed_ms } => {
                if let Some(waited_ms) = unconfirmed_ms {
                    log_unconfirmed(export, token, waited_ms);
                }
                return Ok(());
            }
            Binding::Damaged => {
                let reason = export.cell.damaged().unwrap_or_default();
                return Err(OptionError::new(
                    RepError::Policy,
                    format!(
                        "export {} refuses writes: its fence state is damaged ({reason}); an operator must run `palisade-fencing-proxy repair`; connect without a token to read",
                        export.config.name
                    ),
                ));
            }
            Binding::Stale { fence } => return Err(stale(export, token, fence)),
            Binding::Unconfirmed { waited_ms } => {
                return Err(OptionError::new(
                    RepError::Policy,
                    unconfirmed_refusal(export, token, waited_ms),
                ));
            }
            Binding::AwaitConfirmation => {
                if !nudged {
                    export.cell.nudge_watch();
                    nudged = true;
                }
                tokio::time::sleep(CONFIRM_POLL).await;
                binding = export
                    .admission
                    .borrow()
                    .bind(token, durable(exports, export), go);
            }
            Binding::AskLeaseService => {
                binding = check_and_raise(exports, export, token).await?;
            }
        }
    }
}

/// A token above the fence: asks the lease service, then makes the token
/// durable, as the export's [`Admission`] says.
async fn check_and_raise(
    exports: &Exports,
    export: &ExportRt,
    token: u64,
) -> Result<Binding, OptionError> {
    let link = exports.link.clone();
    let (tenant, resource) = (export.config.tenant.clone(), export.config.resource.clone());
    let verdict = tokio::task::spawn_blocking(move || link.check(&tenant, &resource, token))
        .await
        .map_err(|e| {
            OptionError::new(
                RepError::Unknown,
                format!("asking the lease service failed: {e}"),
            )
        })?;
    let why = match &verdict {
        Verdict::Unreachable(why) => why.as_str(),
        _ => "",
    };
    let checked = export
        .admission
        .borrow()
        .checked(token, &verdict, export.cell.fence());
    let raise_to = match checked {
        Checked::Raise { to, vouched } => {
            if !vouched {
                warn!(export = %export.config.name, token, error = %why, "lease service unreachable; accepting a token above the fence on the local fence alone (lease_service.require_check = false)");
            }
            to
        }
        Checked::RefuseStale {
            newest,
            raise_first,
        } => {
            // The service vouches for `newest`: raise to it (fencing the
            // stale holder sooner), then refuse.
            if raise_first {
                let _ = durable_raise(exports, export, newest).await;
            }
            return Err(OptionError::new(
                RepError::Policy,
                format!(
                    "token {token} is not the current lease on {:?} (newest issued: {newest}); acquire again",
                    export.config.resource
                ),
            ));
        }
        Checked::RefuseUnvouched => {
            warn!(export = %export.config.name, token, error = %why, "lease service unreachable; refusing a token above the fence it cannot vouch for (lease_service.require_check = true)");
            return Err(OptionError::new(
                RepError::Policy,
                format!(
                    "the lease service could not vouch for token {token} ({why}) and export {} requires its confirmation; try again",
                    export.config.name
                ),
            ));
        }
    };
    let durable = durable_raise(exports, export, raise_to)
        .await
        .map_err(|e| {
            OptionError::new(
                RepError::Unknown,
                format!("cannot record the fence durably: {e}"),
            )
        })?;
    let binding = export.admission.borrow().bound(token, durable);
    if matches!(binding, Binding::Bound { .. }) {
        info!(export = %export.config.name, fence = durable, "fence raised by a new holder");
    }
    Ok(binding)
}

fn stale(export: &ExportRt, token: u64, fence: u64) -> OptionError {
    OptionError::new(
        RepError::Policy,
        format!(
            "token {token} is stale: export {} is fenced at {fence}; acquire the lease on {:?} again",
            export.config.name, export.config.resource
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_export_and_token() {
        assert_eq!(split_name("disk0").expect("plain"), ("disk0", None));
        assert_eq!(split_name("disk0@42").expect("token"), ("disk0", Some(42)));
        for bad in [
            "disk0@",
            "disk0@x",
            "disk0@0",
            "disk0@-1",
            "disk0@99999999999999999999",
        ] {
            let e = split_name(bad).expect_err(bad);
            assert_eq!(e.code, RepError::Invalid, "{bad}");
        }
    }
}
