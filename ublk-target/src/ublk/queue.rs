//! One ublk queue: its thread runs a task per tag on a local executor over the queue's ring.
//!
//! A tag's task fetches a request, copies a write's data out of the kernel (`UBLK_F_USER_COPY`:
//! a read of `/dev/ublkcN` at the tag's position), submits the request to the backend, copies a
//! read's data into the kernel, and commits the result, which also fetches the next request.
//! Backend completions arrive on other threads: each wakes its task and kicks an eventfd that
//! the ring polls, so the queue thread, asleep in the ring, wakes up and runs the task.
//! Write buffers are reused once the engine has let go of them ([`Spares`]): a fresh buffer
//! per 1 MiB write costs hundreds of page faults.

use std::cell::RefCell;
use std::os::fd::{AsFd, AsRawFd};
use std::rc::Rc;
use std::sync::Arc;

use engine::buffer::{IoBuf, IoBufMut};
use engine::replica::ClientOp;
use engine::types::Errno;
use io_uring::{opcode, types};
use libublk::io::{UblkDev, UblkIOCtx, UblkQueue};
use libublk::uring_async::ublk_submit_sqe_async;
use libublk::{BufDesc, UblkError, UblkUringData, sys};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::BlockBackend;

/// The fixed file of `/dev/ublkcN` in the queue's ring.
const CHAR_DEVICE: types::Fixed = types::Fixed(0);

/// Idle seconds before the queue lets the kernel reclaim its resources.
const IDLE_SECONDS: u64 = 20;

/// Write buffers a queue keeps for reuse.
const SPARES_MAX: usize = 16;

/// The queue's written buffers, reused once nobody else holds them.
#[derive(Default)]
struct Spares(RefCell<Vec<IoBuf>>);

impl Spares {
    /// A buffer of `len` bytes: a spare nobody holds any more, or a new one.
    fn take(&self, len: usize) -> IoBufMut {
        let mut spares = self.0.borrow_mut();
        let mut kept = Vec::with_capacity(spares.len());
        let mut found = None;
        for spare in spares.drain(..) {
            if found.is_some() {
                kept.push(spare);
                continue;
            }
            match spare.try_reclaim(len) {
                Ok(buffer) => found = Some(buffer),
                Err(spare) => kept.push(spare),
            }
        }
        *spares = kept;
        found.unwrap_or_else(|| IoBufMut::zeroed(len))
    }

    /// Keeps `buffer` for reuse (the oldest spare goes when there are too many).
    fn give(&self, buffer: IoBuf) {
        let mut spares = self.0.borrow_mut();
        if spares.len() >= SPARES_MAX {
            spares.remove(0);
        }
        spares.push(buffer);
    }
}

/// Runs queue `qid` until the device stops.
pub(super) fn run(qid: u16, dev: &UblkDev, backend: &Arc<dyn BlockBackend>) {
    let queue = match UblkQueue::new(qid, dev) {
        Ok(queue) => Rc::new(queue),
        Err(error) => {
            tracing::error!("ublk queue {qid}: {error}");
            return;
        }
    };
    let kick = match EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC) {
        Ok(kick) => Arc::new(kick),
        Err(error) => {
            tracing::error!("ublk queue {qid}: eventfd: {error}");
            return;
        }
    };
    let executor = Rc::new(smol::LocalExecutor::new());
    let spares = Rc::new(Spares::default());
    let tasks: Vec<_> = queue
        .tags()
        .map(|tag| {
            let (queue, backend, kick) =
                (Rc::clone(&queue), Arc::clone(backend), Arc::clone(&kick));
            let spares = Rc::clone(&spares);
            executor.spawn(async move {
                let context = Context {
                    backend: backend.as_ref(),
                    kick: &kick,
                    spares: &spares,
                };
                match serve(&queue, tag, &context).await {
                    Ok(()) | Err(UblkError::QueueIsDown) => {}
                    Err(error) => tracing::error!("ublk queue {qid} tag {tag}: {error}"),
                }
            })
        })
        .collect();
    let watcher = {
        let kick = Arc::clone(&kick);
        executor.spawn(async move { watch(&kick).await })
    };
    let ticking = Rc::clone(&executor);
    let polled = Rc::clone(&queue);
    smol::block_on(executor.run(async move {
        let run_tasks = || while ticking.try_tick() {};
        let done = || tasks.iter().all(smol::Task::is_finished);
        if let Err(error) =
            libublk::wait_and_handle_io_events(&polled, Some(IDLE_SECONDS), run_tasks, done).await
        {
            tracing::error!("ublk queue {qid}: {error}");
        }
    }));
    drop(watcher);
}

/// Keeps a poll on the eventfd in the ring: its completion wakes the queue thread.
async fn watch(kick: &EventFd) {
    loop {
        let poll =
            opcode::PollAdd::new(types::Fd(kick.as_fd().as_raw_fd()), libc::POLLIN as u32).build();
        if ublk_submit_sqe_async(poll, UblkUringData::Target as u64)
            .await
            .is_err()
        {
            return;
        }
        // Reset the counter (it may be zero already: nothing to do then).
        let _ = kick.read();
    }
}

/// What every tag of a queue shares.
struct Context<'a> {
    backend: &'a dyn BlockBackend,
    kick: &'a Arc<EventFd>,
    spares: &'a Spares,
}

/// Serves one tag until the queue goes down.
async fn serve(queue: &UblkQueue<'_>, tag: u16, context: &Context<'_>) -> Result<(), UblkError> {
    queue
        .submit_io_prep_cmd(tag, BufDesc::Slice(&[]), 0, None)
        .await?;
    loop {
        let result = handle(queue, tag, context).await;
        queue
            .submit_io_commit_cmd(tag, BufDesc::Slice(&[]), result)
            .await?;
    }
}

/// Does the tag's current request; returns its result for the kernel (bytes, or -errno).
async fn handle(queue: &UblkQueue<'_>, tag: u16, context: &Context<'_>) -> i32 {
    let Context {
        backend,
        kick,
        spares,
    } = *context;
    let iod = queue.get_iod(tag);
    let op = iod.op_flags & 0xff;
    let fua = iod.op_flags & sys::UBLK_IO_F_FUA != 0;
    let offset = iod.start_sector << 9;
    let length = u64::from(iod.nr_sectors) << 9;
    let position = UblkIOCtx::ublk_user_copy_pos(queue.get_qid(), tag, 0);
    let bytes = i32::try_from(length).unwrap_or(i32::MAX);
    let done = |result: Result<Option<IoBuf>, Errno>| result.map_or_else(|e| -e.0, |_| 0);
    match op {
        sys::UBLK_IO_OP_READ => {
            match call(backend, ClientOp::Read { offset, length }, kick).await {
                Ok(Some(data)) if data.len() as u64 == length => {
                    match copy(opcode_write(data.as_slice(), position), length).await {
                        Ok(()) => bytes,
                        Err(errno) => -errno,
                    }
                }
                Ok(_) => -libc::EIO,
                Err(errno) => -errno.0,
            }
        }
        sys::UBLK_IO_OP_WRITE => {
            let Ok(capacity) = usize::try_from(length) else {
                return -libc::EINVAL;
            };
            let mut data = spares.take(capacity);
            if let Err(errno) = copy(opcode_read(data.as_mut_slice(), position), length).await {
                return -errno;
            }
            let data = data.freeze();
            let write = ClientOp::Write {
                offset,
                data: data.clone(),
                fua,
            };
            let result = call(backend, write, kick).await;
            spares.give(data);
            match result {
                Ok(_) => bytes,
                Err(errno) => -errno.0,
            }
        }
        sys::UBLK_IO_OP_FLUSH => done(call(backend, ClientOp::Flush, kick).await),
        sys::UBLK_IO_OP_DISCARD => {
            let trim = ClientOp::Trim {
                offset,
                length,
                fua,
            };
            done(call(backend, trim, kick).await)
        }
        sys::UBLK_IO_OP_WRITE_ZEROES => {
            let zeroes = ClientOp::WriteZeroes {
                offset,
                length,
                fua,
            };
            done(call(backend, zeroes, kick).await)
        }
        _ => -libc::EOPNOTSUPP,
    }
}

/// Copies a read's data into the request (a write to the character device).
fn opcode_write(data: &[u8], position: u64) -> impl Fn(u64) -> io_uring::squeue::Entry + '_ {
    move |done| {
        let start = usize::try_from(done).unwrap_or(usize::MAX).min(data.len());
        let rest = &data[start..];
        opcode::Write::new(CHAR_DEVICE, rest.as_ptr(), rest.len() as u32)
            .offset(position + done)
            .build()
    }
}

/// Copies a write's data out of the request (a read of the character device).
fn opcode_read(data: &mut [u8], position: u64) -> impl Fn(u64) -> io_uring::squeue::Entry + '_ {
    let (start, len) = (data.as_mut_ptr(), data.len());
    move |done| {
        let offset = usize::try_from(done).unwrap_or(usize::MAX).min(len);
        // Pointer arithmetic within `data`, which the caller keeps borrowed until the copy ends.
        let rest = start.wrapping_add(offset);
        opcode::Read::new(CHAR_DEVICE, rest, (len - offset) as u32)
            .offset(position + done)
            .build()
    }
}

/// Runs `operation` (given the bytes done so far) until `length` bytes are copied.
async fn copy(operation: impl Fn(u64) -> io_uring::squeue::Entry, length: u64) -> Result<(), i32> {
    let mut done = 0;
    while done < length {
        let result = ublk_submit_sqe_async(operation(done), UblkUringData::Target as u64)
            .await
            .map_err(|_| libc::EIO)?;
        match u64::try_from(result) {
            Ok(0) => return Err(libc::EIO),
            Ok(bytes) => done += bytes,
            Err(_) => return Err(-result),
        }
    }
    Ok(())
}

/// Submits `op` to the backend and waits for its completion, which wakes this queue's ring.
async fn call(
    backend: &dyn BlockBackend,
    op: ClientOp,
    kick: &Arc<EventFd>,
) -> Result<Option<IoBuf>, Errno> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let kick = Arc::clone(kick);
    backend.submit(
        op,
        Box::new(move |result| {
            let _ = sender.send(result);
            let _ = kick.write(1);
        }),
    );
    receiver.await.unwrap_or(Err(Errno::EIO))
}
