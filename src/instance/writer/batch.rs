//! One batch of writes: run, journaled, shipped, made durable, committed — or, mirrored,
//! parked until the active backup holds it (see the essay of [`super`]). Also what keeps
//! mirrored writes waiting before they begin while they may not commit.

use super::statement::{Segment, Step, run_request};
use super::*;

/// Where the frames of the batch being built go.
pub(super) struct Streams<'a> {
    pub(super) local: &'a mut Vec<u8>,
    pub(super) next_local: JournalPos,
    pub(super) mirror: Option<&'a mut Vec<u8>>,
    pub(super) next_mirror: JournalPos,
    pub(super) epoch: crate::journal::Epoch,
    pub(super) time_ms: i64,
}

/// How a batch left `commit_on`.
pub(super) enum Committed {
    /// Committed (or failed) and answered.
    Done,
    /// Its mirrored records are durable here and shipped; it commits once the active backup
    /// acknowledged `last`.
    Waiting {
        last: JournalPos,
        outcomes: Vec<Outcome>,
        began: Began,
    },
}

/// Mirrored work durable in the journal and shipped, waiting for the active backup's
/// acknowledgement before it becomes visible.
pub(super) struct Parked {
    pub(super) last: JournalPos,
    pub(super) since: Instant,
    pub(super) work: ParkedWork,
}

/// When a batch's `BEGIN` ran, for its commit time ([`crate::metrics::committed`]).
#[derive(Clone, Copy)]
pub(super) struct Began(Instant);

pub(super) enum ParkedWork {
    /// A batch: its transaction is open on its namespace's connection.
    Batch {
        namespace: NamespaceName,
        conn: Box<NamespaceConn>,
        outcomes: Vec<Outcome>,
        began: Began,
    },
    /// The extension's work (Add to Mirror: its events are journaled; the databases switch to
    /// the mirror journal once the backup holds them): handed back to it when acknowledged.
    Extension(Box<dyn ExtensionCommand>),
}

impl Parked {
    /// Answers everyone waiting on it with `err` (the work is left undone here).
    pub(super) fn fail(self, err: &Error) {
        match self.work {
            ParkedWork::Batch { conn, outcomes, .. } => {
                let _ = conn.internal(|c| c.execute_batch("ROLLBACK"));
                fail_all(outcomes, err);
            }
            ParkedWork::Extension(command) => command.refuse(err.clone()),
        }
    }
}

impl Writer {
    pub(super) fn commit_batch(
        &mut self,
        batch: Vec<(WriteRequest, Reply<QueryResult>)>,
    ) -> Result<(), Fatal> {
        let namespace = batch[0].0.namespace.clone();
        let conn = match self.take_connection(&namespace) {
            Ok(conn) => conn,
            Err(err) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(err.clone()));
                }
                return Ok(());
            }
        };
        match self.commit_on(&conn, batch)? {
            Committed::Done => {
                self.conns.insert(namespace, conn);
            }
            Committed::Waiting {
                last,
                outcomes,
                began,
            } => {
                // The transaction stays open on its connection until the backup acknowledged.
                self.parked = Some(Parked {
                    last,
                    since: self.clock.now(),
                    work: ParkedWork::Batch {
                        namespace,
                        conn: Box::new(conn),
                        outcomes,
                        began,
                    },
                });
                self.settle_parked()?;
            }
        }
        Ok(())
    }

    /// Commits one batch (see the module essay); a batch with mirrored records is left open,
    /// durable in the journal and shipped, to commit once the backup acknowledged it.
    pub(super) fn commit_on(
        &mut self,
        conn: &NamespaceConn,
        batch: Vec<(WriteRequest, Reply<QueryResult>)>,
    ) -> Result<Committed, Fatal> {
        // A client that gave up (its request timed out) is not written for: it was told
        // nothing, and a retry of it must not become a second row.
        let batch: Vec<_> = batch
            .into_iter()
            .filter(|(_, reply)| !reply.is_closed())
            .collect();
        if batch.is_empty() {
            return Ok(Committed::Done);
        }
        crate::metrics::group_commit(batch.len());
        let began = Began(Instant::now());
        if let Err(err) = conn.internal(|c| c.execute_batch("BEGIN")) {
            let err = Error::from(err);
            for (_, reply) in batch {
                let _ = reply.send(Err(err.clone()));
            }
            return Ok(Committed::Done);
        }
        self.local_frames.clear();
        self.mirror_frames.clear();
        let first_local = self.local.end().next();
        let first_mirror = self
            .mirror_journal
            .as_ref()
            .map(|j| j.end().next())
            .unwrap_or(JournalPos(1));
        let mut streams = Streams {
            local: &mut self.local_frames,
            next_local: first_local,
            mirror: self
                .mirror_journal
                .as_ref()
                .map(|_| &mut self.mirror_frames),
            next_mirror: first_mirror,
            epoch: self.epoch,
            time_ms: now_ms(),
        };
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(batch.len());
        // The requests since the last schema statement share one session per database: their
        // net row changes become one record per journal (see `Segment`).
        let mut segment: Option<Segment<'_>> = None;
        for (request, reply) in batch {
            let step = run_request(conn, &request, &mut segment, &mut streams, &mut outcomes);
            match step {
                Ok(Step::Done(result, changed)) => {
                    if changed && let Some(segment) = segment.as_mut() {
                        segment.members.push(outcomes.len());
                    }
                    outcomes.push((result, reply));
                }
                Ok(Step::TransactionLost(err)) => {
                    // SQLite rolled back the whole transaction (an interrupted or failed
                    // statement can do that): the batch so far is undone and nothing of it was
                    // journaled. Its clients are told to retry; the rest continue afresh.
                    segment = None;
                    streams.local.clear();
                    if let Some(m) = streams.mirror.as_mut() {
                        m.clear();
                    }
                    streams.next_local = first_local;
                    streams.next_mirror = first_mirror;
                    let retry = Error::Conflict(
                        "the write was rolled back together with another statement of its batch; try again".into(),
                    );
                    for (result, earlier) in outcomes.drain(..) {
                        let _ = earlier.send(result.and(Err(retry.clone())));
                    }
                    let _ = reply.send(Err(err));
                    if let Err(err) = conn.internal(|c| c.execute_batch("BEGIN")) {
                        return Err(Fatal(format!("could not start a transaction again: {err}")));
                    }
                }
                Err(Fatal(why)) => {
                    outcomes.push((Err(Error::Unavailable(why.clone())), reply));
                    drop(segment);
                    let _ = conn.internal(|c| c.execute_batch("ROLLBACK"));
                    fail_all(outcomes, &Error::Unavailable(why.clone()));
                    return Err(Fatal(why));
                }
            }
        }
        if let Some(segment) = segment.take()
            && let Err(err) = segment.flush(conn, &mut streams, &mut outcomes)
        {
            // Nothing is journaled yet: undo the batch and report; the instance stays healthy.
            let _ = conn.internal(|c| c.execute_batch("ROLLBACK"));
            fail_all(outcomes, &err);
            return Ok(Committed::Done);
        }
        let (next_local, next_mirror) = (streams.next_local, streams.next_mirror);
        let local_records = next_local.0 - first_local.0;
        let mirror_records = next_mirror.0 - first_mirror.0;

        if local_records + mirror_records > 0 {
            // From here on a failure leaves the disk in a state only recovery can sort out.
            if let Err(err) = self.make_durable(first_local, next_local, first_mirror, next_mirror)
            {
                let _ = conn.internal(|c| c.execute_batch("ROLLBACK"));
                let why = format!(
                    "journal write failed ({err}); whether the last writes are durable is unknown"
                );
                fail_all(outcomes, &Error::Unavailable(why.clone()));
                return Err(Fatal(why));
            }
        }
        if mirror_records > 0 {
            // Step 4: a mirrored batch becomes visible only once the active backup holds it.
            // Committing it now would let readers here see rows a takeover undoes; the writer
            // parks it and goes on with other work meanwhile (see `settle_parked`).
            return Ok(Committed::Waiting {
                last: JournalPos(next_mirror.0 - 1),
                outcomes,
                began,
            });
        }
        // Only now, with the batch durable here, do its changes become visible.
        self.commit_and_answer(conn, outcomes, local_records > 0, None, began)?;
        Ok(Committed::Done)
    }

    /// `COMMIT` and answer the batch's clients. After a journal write, a failed commit leaves
    /// the files behind the durable journal: fail-stop, recovery replays it. A mirrored batch
    /// (`mirrored`: its last mirror journal record) is announced committed to the members
    /// between the two: only once it is committed here, so no member shows a row before the
    /// primary does, and before its clients hear, so a client told its write is done knows the
    /// members were told; a commit that failed announces nothing.
    pub(super) fn commit_and_answer(
        &mut self,
        conn: &NamespaceConn,
        outcomes: Vec<Outcome>,
        journaled: bool,
        mirrored: Option<JournalPos>,
        began: Began,
    ) -> Result<(), Fatal> {
        if let Err(err) = conn.internal(|c| c.execute_batch("COMMIT")) {
            let _ = conn.internal(|c| c.execute_batch("ROLLBACK"));
            let err = Error::Internal(format!("commit failed: {err}"));
            fail_all(outcomes, &err);
            return if journaled {
                Err(Fatal(err.to_string()))
            } else {
                Ok(())
            };
        }
        if let Some(last) = mirrored {
            self.replication.committed(last);
        }
        let commits = outcomes.iter().filter(|(result, _)| result.is_ok()).count();
        for (result, reply) in outcomes {
            let _ = reply.send(result);
        }
        crate::metrics::committed(commits, began.0.elapsed());
        Ok(())
    }

    /// Looks at the parked work: commits it once the active backup acknowledged it (the
    /// members then learn that they may apply it), or gives it up when the hub closed (the
    /// instance stops, or this member is no longer primary: its records stay in the journal,
    /// which the next start replays or undoes, and the clients hear that the outcome is not
    /// known).
    pub(super) fn settle_parked(&mut self) -> Result<(), Fatal> {
        let Some(parked) = &self.parked else {
            return Ok(());
        };
        let (last, since) = (parked.last, parked.since);
        match self.replication.acknowledgement(last, since) {
            Acknowledged::Waiting => Ok(()),
            Acknowledged::Closed => {
                let parked = self.parked.take().expect("looked at above");
                parked.fail(&Error::Unavailable(
                    "the instance stopped before the backup acknowledged the write; whether it \
                     survives is not known"
                        .into(),
                ));
                Ok(())
            }
            Acknowledged::Yes => {
                let parked = self.parked.take().expect("looked at above");
                // Ordering: the members learn they may apply the batch only once it is
                // committed here, so no member shows a row before the primary does. A commit
                // that failed announces nothing (the instance stops; its restart replays the
                // journal, and only then says where the committed end is).
                match parked.work {
                    ParkedWork::Batch {
                        namespace,
                        conn,
                        outcomes,
                        began,
                    } => {
                        let result =
                            self.commit_and_answer(&conn, outcomes, true, Some(last), began);
                        self.conns.insert(namespace, *conn);
                        result
                    }
                    ParkedWork::Extension(command) => {
                        let result = self.extension_command(command);
                        if result.is_ok() {
                            self.replication.committed(last);
                        }
                        result
                    }
                }
            }
        }
    }

    /// Whether `command` must wait until mirrored writes may commit: while work is parked,
    /// every command that could touch its files (writes of its namespace or of any namespace
    /// with a mirrored database, and everything but writes), and in the trouble state every
    /// mirrored write. Writes to local databases go on.
    pub(super) fn must_wait(&self, command: &Command) -> bool {
        if self.mirror_journal.is_none() || matches!(command, Command::Wake | Command::Settled(_)) {
            return false;
        }
        let parked = self.parked.as_ref();
        match command {
            Command::Write(request, _) => {
                (parked.is_some() || !self.replication.may_commit())
                    && self.touches_mirror(&request.namespace, parked)
            }
            Command::Extension(command) if command.writes_replicated() => {
                parked.is_some() || !self.replication.may_commit()
            }
            _ => parked.is_some(),
        }
    }

    /// Whether a write in `namespace` may touch a mirrored database, or a file of the parked
    /// batch (whose transaction holds its files' write locks).
    pub(super) fn touches_mirror(
        &self,
        namespace: &NamespaceName,
        parked: Option<&Parked>,
    ) -> bool {
        let state = self.catalog.snapshot();
        let Ok(entry) = state.namespace(namespace) else {
            return false;
        };
        let parked_dbs: Vec<&DbName> = match parked.map(|p| &p.work) {
            Some(ParkedWork::Batch { namespace, .. }) => state
                .namespace(namespace)
                .map(|n| n.databases().collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        entry.databases().any(|db| {
            parked_dbs.contains(&db)
                || state
                    .databases
                    .get(db)
                    .is_some_and(|d| d.mirrored.is_some() && !d.read_only)
        })
    }

    /// Holds `command` until mirrored writes may commit; refuses it when too many wait.
    pub(super) fn hold_for_mirror(&mut self, command: Command) {
        if self.waiting.len() + self.held.len() < MAX_HELD {
            self.waiting.push_back(command);
            return;
        }
        refuse(
            command,
            Error::Unavailable(
                "writes to mirrored databases wait until the backup acknowledges (or the \
                 trouble state ends), and too many are waiting: try again later"
                    .into(),
            ),
        );
    }

    /// Puts the held commands back in line, first, once nothing keeps them waiting.
    pub(super) fn release_waiting(&mut self) {
        if self.waiting.is_empty()
            || self.parked.is_some()
            || (self.mirror_journal.is_some() && !self.replication.may_commit())
        {
            return;
        }
        while let Some(command) = self.waiting.pop_back() {
            self.deferred.push_front(command);
        }
    }

    /// Step 3 of the essay: append, ship, fsync.
    pub(super) fn make_durable(
        &mut self,
        first_local: JournalPos,
        next_local: JournalPos,
        first_mirror: JournalPos,
        next_mirror: JournalPos,
    ) -> Result<()> {
        let mirror_last = JournalPos(next_mirror.0 - 1);
        let mirror_records = next_mirror.0 - first_mirror.0;
        if mirror_records > 0 {
            let journal = self
                .mirror_journal
                .as_mut()
                .expect("mirror frames need the mirror journal");
            self.replication
                .publish(journal, &self.mirror_frames, first_mirror, mirror_last)?;
        }
        let local_records = next_local.0 - first_local.0;
        if local_records > 0 {
            self.local.append(
                &self.local_frames,
                JournalPos(next_local.0 - 1),
                local_records,
            )?;
            let syncing = Instant::now();
            self.local.sync()?;
            crate::metrics::fsync(syncing.elapsed());
        }
        if mirror_records > 0 {
            let journal = self
                .mirror_journal
                .as_mut()
                .expect("mirror frames need the mirror journal");
            let syncing = Instant::now();
            journal.sync()?;
            crate::metrics::fsync(syncing.elapsed());
        }
        Ok(())
    }

    /// Writes one event record to the mirror journal, shipped and durable here, and returns its
    /// position. Like a batch, it counts as committed only once the active backup holds it:
    /// [`Writer::commit_event_alone`] when there is no backup to wait for, else [`Writer::park`].
    pub(crate) fn write_event(
        &mut self,
        db: Option<&DbName>,
        json: &str,
    ) -> Result<JournalPos, Fatal> {
        let journal = self
            .mirror_journal
            .as_mut()
            .ok_or_else(|| Fatal("no mirror journal".into()))?;
        let pos = journal.end().next();
        self.mirror_frames.clear();
        let mut frame = FrameBuilder::begin(&mut self.mirror_frames, pos, self.epoch, now_ms());
        frame.set_event(db.map(|d| d.as_str()), json);
        frame.finish();
        // Durability: shipped before our own fsync, like a batch (step 3 of the module essay).
        let durable = self
            .replication
            .publish(journal, &self.mirror_frames, pos, pos)
            .and_then(|_| journal.sync());
        if let Err(err) = durable {
            return Err(Fatal(format!("mirror journal write failed: {err}")));
        }
        Ok(pos)
    }

    /// Writes and commits an event of a primary that has no backup yet (a new mirror, a new
    /// epoch): there is no acknowledgement to wait for.
    pub(crate) fn commit_event_alone(&mut self, json: &str) -> Result<JournalPos, Fatal> {
        let pos = self.write_event(None, json)?;
        self.replication.committed(pos);
        Ok(pos)
    }

    /// Parks the extension's `then` until the active backup holds the mirror journal up to
    /// `last` (written with [`Writer::write_event`]): it then comes back to the extension as a
    /// command, or is refused if replication closes first. Meanwhile the writer goes on with
    /// other work.
    ///
    /// The wait is settled by the writer's loop right after the extension returns (never from
    /// inside it: `then` goes back to the extension, which is busy until it returns).
    pub(crate) fn park(&mut self, last: JournalPos, then: Box<dyn ExtensionCommand>) {
        self.parked = Some(Parked {
            last,
            since: self.clock.now(),
            work: ParkedWork::Extension(then),
        });
    }
}
