//! Hostile clients against the real stack (issue #13, ingest): bodies built to cost memory
//! and CPU, strings built to break what comes after ingest, and clients too slow to finish.
//! Each case gets its typed answer, and a normal client's upload still goes through.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use imgpipe_e2e::Pipeline;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A bound on how long a test waits for an answer, so that a server that never answers fails
/// the test instead of hanging it. Not a timing assertion: well-behaved answers take
/// milliseconds.
const PATIENCE: Duration = Duration::from_secs(300);

fn photo() -> Vec<u8> {
    std::fs::read(imgpipe_e2e::corpus_dir().join("photos/kde-PastelHills-3200.jpg")).unwrap()
}

fn address(pipeline: &Pipeline) -> String {
    pipeline.base_url.trim_start_matches("http://").to_string()
}

/// An HTTP/1.1 answer read off a raw connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: String,
    body: Value,
}

/// Reads one response: the head, then `Content-Length` bytes of JSON body.
async fn read_answer(reader: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Answer> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = reader.read(&mut buffer).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        received.extend_from_slice(&buffer[..n]);
    };
    let headers = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
    let status = headers[9..12].parse().unwrap();
    let length: usize = headers
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |value| value.trim().parse().unwrap());
    while received.len() < head_end + length {
        let n = reader.read(&mut buffer).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        received.extend_from_slice(&buffer[..n]);
    }
    let body = serde_json::from_slice(&received[head_end..head_end + length]).unwrap_or_default();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// POSTs a chunked body of `preface` then zeros, `total` bytes in all, on a raw connection,
/// reading the answer while still sending. The answer, and how much had been sent by then.
async fn stream_zeros(
    pipeline: &Pipeline,
    content_type: &str,
    preface: Vec<u8>,
    total: u64,
) -> (Answer, u64) {
    let address = address(pipeline);
    let (mut reader, mut writer) = TcpStream::connect(&address).await.unwrap().into_split();
    let head = format!(
        "POST /v1/images HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n",
        pipeline.api_key
    );
    let sent = Arc::new(AtomicU64::new(0));
    let sending = tokio::spawn({
        let sent = Arc::clone(&sent);
        async move {
            writer.write_all(head.as_bytes()).await?;
            let zeros = vec![0u8; 64 * 1024];
            let mut chunk: &[u8] = &preface;
            let mut body_sent = 0u64;
            while body_sent < total {
                writer
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                writer.write_all(chunk).await?;
                writer.write_all(b"\r\n").await?;
                body_sent += chunk.len() as u64;
                sent.store(body_sent, Ordering::SeqCst);
                chunk = &zeros;
            }
            writer.write_all(b"0\r\n\r\n").await
        }
    });
    let answer = tokio::time::timeout(PATIENCE, read_answer(&mut reader))
        .await
        .expect("ingest answers")
        .expect("an HTTP answer");
    let sent_by_then = sent.load(Ordering::SeqCst);
    sending.abort();
    (answer, sent_by_then)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunked_form_of_zeros_is_refused_while_it_still_streams() {
    const LIMIT: u64 = 2_000_000;
    const TOTAL: u64 = 128 * 1024 * 1024;
    let pipeline = Pipeline::start_with(|settings| settings.max_upload_bytes = LIMIT)
        .await
        .expect("pipeline starts");
    let form = "multipart/form-data; boundary=XyZ";
    let mut real_file_then_zeros = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; \
        filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
        .to_vec();
    real_file_then_zeros.extend_from_slice(&photo()[..64 * 1024]);
    let cases = [
        (
            "zeros and no boundary",
            Vec::new(),
            400,
            "invalid-multipart",
        ),
        (
            "a part header that never ends",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\nX-Pad: ".to_vec(),
            400,
            "invalid-multipart",
        ),
        (
            "a file that runs on in zeros",
            real_file_then_zeros,
            413,
            "payload-too-large",
        ),
    ];
    for (case, preface, status, code) in cases {
        let (answer, sent) = stream_zeros(&pipeline, form, preface, TOTAL).await;
        assert_eq!(
            (answer.status, answer.body["code"].as_str()),
            (status, Some(code)),
            "{case}: {answer:?}"
        );
        assert!(
            answer.headers.contains("content-type: application/json"),
            "{case}: {answer:?}"
        );
        assert!(
            sent < TOTAL,
            "{case}: answered only after the whole {TOTAL}-byte body ({sent})"
        );
    }

    let (status, accepted) = pipeline.upload(photo()).await.unwrap();
    assert_eq!(status, 202, "a normal upload still works: {accepted}");
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_string_a_client_gives_is_checked() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let upload = |metadata: &str| {
        let form = reqwest::multipart::Form::new()
            .text("metadata", metadata.to_string())
            .part("file", reqwest::multipart::Part::bytes(photo()));
        pipeline
            .http
            .post(pipeline.url("/v1/images"))
            .bearer_auth(&pipeline.api_key)
            .multipart(form)
            .send()
    };
    // A NUL would pass ingest and be dead-lettered by the projector: 404 forever after a 202.
    for metadata in [r#"{"album":"a\u0000b"}"#, r#"{"album":"\u001b[2J"}"#] {
        let response = upload(metadata).await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid-metadata")),
            "{metadata}: {body}"
        );
    }

    // X-Request-Id goes into logs and events: a long or unprintable one is replaced.
    let request_id = |sent: &str| {
        let sent = sent.to_string();
        let pipeline = &pipeline;
        async move {
            let response = pipeline
                .http
                .get(pipeline.url("/v1/stats"))
                .bearer_auth(&pipeline.api_key)
                .header("x-request-id", sent)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(request_id("trace-42").await, "trace-42", "a fit id is kept");
    for unfit in ["x".repeat(129), "tab\there".to_string()] {
        let answered = request_id(&unfit).await;
        assert_ne!(answered, unfit);
        assert!(
            uuid::Uuid::parse_str(&answered).is_ok(),
            "a generated id: {answered}"
        );
    }

    // A crafted cursor whose arithmetic would overflow is a 400, not a dropped connection.
    let cursor = format!("{}_{}", i128::MAX, uuid::Uuid::now_v7());
    let (status, body) = pipeline
        .get(&format!("/v1/images?cursor={cursor}"))
        .await
        .unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid-query")),
        "{body}"
    );
    pipeline.stop().await.unwrap();
}

/// Opens a connection and sends half a request head, then waits: a slowloris.
async fn half_a_header(address: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /v1/stats HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
        .await
        .unwrap();
    stream
}

/// Starts an upload of a declared 10 MB that then sends a byte every 200 ms.
fn trickle(address: String, api_key: String) -> tokio::task::JoinHandle<Answer> {
    tokio::spawn(async move {
        let stream = TcpStream::connect(&address).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let head = format!(
            "POST /v1/images HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {api_key}\r\n\
             Content-Type: image/jpeg\r\nContent-Length: 10000000\r\n\r\n"
        );
        let photo = photo();
        let sending = tokio::spawn(async move {
            writer.write_all(head.as_bytes()).await?;
            writer.write_all(&photo[..64]).await?;
            for byte in &photo[64..] {
                tokio::time::sleep(Duration::from_millis(200)).await;
                writer.write_all(&[*byte]).await?;
            }
            Ok::<_, std::io::Error>(())
        });
        let answer = tokio::time::timeout(PATIENCE, read_answer(&mut reader))
            .await
            .expect("the trickling upload is answered")
            .expect("an HTTP answer");
        sending.abort();
        answer
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_clients_cannot_hold_the_server() {
    const PER_CLIENT: usize = 20;
    let pipeline = Pipeline::start_with(|settings| {
        settings.header_read_timeout_secs = 2;
        settings.upload_deadline_secs = 4;
        settings.max_concurrent_uploads_per_client = PER_CLIENT;
    })
    .await
    .expect("pipeline starts");
    let address = address(&pipeline);

    let mut slow = Vec::new();
    for _ in 0..300 {
        slow.push(half_a_header(&address).await);
    }
    // The second client trickles more uploads than it may have in progress.
    let trickling: Vec<_> = (0..PER_CLIENT + 10)
        .map(|_| trickle(address.clone(), pipeline.other_api_key.clone()))
        .collect();

    // Meanwhile the first client's upload goes through.
    let (status, accepted) = pipeline.upload(photo()).await.unwrap();
    assert_eq!(status, 202, "{accepted}");

    // Each trickling upload ends: refused at once past the client's cap, or cut off at the
    // upload deadline, however steadily its bytes come.
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for upload in trickling {
        let answer = upload.await.unwrap();
        let code = answer.body["code"].as_str().unwrap_or_default().to_string();
        if code == "too-many-uploads" {
            assert_eq!(answer.status, 429, "{answer:?}");
            assert!(answer.headers.contains("retry-after:"), "{answer:?}");
        } else {
            assert_eq!((answer.status, code.as_str()), (408, "upload-timed-out"));
        }
        *codes.entry(code).or_default() += 1;
    }
    assert_eq!(codes.get("too-many-uploads"), Some(&10), "{codes:?}");

    // And every half-header connection is closed by the server.
    for mut stream in slow {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a slowloris connection is still open");
    }

    let (status, accepted) = pipeline.upload(photo()).await.unwrap();
    assert_eq!(status, 202, "{accepted}");
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_deletes_and_other_changes_have_their_own_per_client_limits() {
    let pipeline = Pipeline::start_with(|settings| {
        settings.reads_per_minute = 3;
        settings.deletes_per_minute = 1;
        settings.changes_per_minute = 1;
    })
    .await
    .expect("pipeline starts");
    let send = |method: reqwest::Method, key: &str, path: &str| {
        pipeline
            .http
            .request(method, pipeline.url(path))
            .bearer_auth(key)
            .send()
    };
    for _ in 0..3 {
        let response = send(reqwest::Method::GET, &pipeline.api_key, "/v1/stats")
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let limited = send(reqwest::Method::GET, &pipeline.api_key, "/v1/images")
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["code"], "rate-limited", "{body}");

    let missing = format!("/v1/images/{}", uuid::Uuid::now_v7());
    let first = send(reqwest::Method::DELETE, &pipeline.api_key, &missing)
        .await
        .unwrap();
    assert_eq!(first.status(), 404);
    let second = send(reqwest::Method::DELETE, &pipeline.api_key, &missing)
        .await
        .unwrap();
    assert_eq!(second.status(), 429, "the second delete of the minute");

    // A change other than an upload (a webhook's) has a budget of its own; uploads do not
    // count against it.
    let webhook = format!("/v1/webhooks/{}", uuid::Uuid::now_v7());
    let change = |key: &str| {
        pipeline
            .http
            .patch(pipeline.url(&webhook))
            .bearer_auth(key.to_string())
            .json(&serde_json::json!({"enabled": false}))
            .send()
    };
    assert_eq!(change(&pipeline.api_key).await.unwrap().status(), 404);
    assert_eq!(
        change(&pipeline.api_key).await.unwrap().status(),
        429,
        "the second change of the minute"
    );
    let (status, accepted) = pipeline.upload(photo()).await.unwrap();
    assert_eq!(status, 202, "an upload is not a change: {accepted}");

    // Another client has budgets of its own.
    let other = send(reqwest::Method::GET, &pipeline.other_api_key, "/v1/stats")
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    pipeline.stop().await.unwrap();
}

/// The image's events on the log itself (not the read model), read up to where the log ends
/// now.
async fn logged_event_types(pipeline: &Pipeline, image: uuid::Uuid) -> Vec<String> {
    imgpipe_e2e::read_topic(&pipeline.kafka, &pipeline.kafka.topics().events)
        .await
        .unwrap()
        .iter()
        .filter_map(|record| imgpipe_schemas::decode(rdkafka::Message::payload(record)?).ok())
        .filter(|event| event.image_id == image)
        .map(|event| event.event_type().as_str().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_and_repeated_deletes_append_one_image_deleted() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let (status, accepted) = pipeline.upload(photo()).await.unwrap();
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_string();
    pipeline
        .wait_until_settled(&id, Duration::from_secs(120))
        .await
        .unwrap();

    let path = format!("/v1/images/{id}");
    let deletes =
        (0..6).map(|_| pipeline.request(reqwest::Method::DELETE, &pipeline.api_key, &path));
    let answers = futures::future::join_all(deletes).await;
    for answer in &answers {
        let (status, body) = answer.as_ref().unwrap();
        assert!(
            *status == 202 || (*status == 409 && body["code"] == "deletion-in-flight"),
            "{status} {body}"
        );
    }
    // And once more after they all answered, before the read model shows the deletion.
    let (status, _) = pipeline
        .request(reqwest::Method::DELETE, &pipeline.api_key, &path)
        .await
        .unwrap();
    assert_eq!(status, 202);

    let types = logged_event_types(&pipeline, id.parse().unwrap()).await;
    let deleted = types.iter().filter(|t| *t == "ImageDeleted").count();
    assert_eq!(deleted, 1, "{types:?}");
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_images_timeline_is_paginated() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let (status, accepted) = pipeline.upload(photo()).await.unwrap();
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_string();
    pipeline
        .wait_until_settled(&id, Duration::from_secs(120))
        .await
        .unwrap();
    let (_, whole) = pipeline.timeline(&id).await.unwrap();
    assert!(whole.len() >= 2, "{whole:?}");

    let mut paged = Vec::new();
    let mut path = format!("/v1/images/{id}/events?limit=1");
    loop {
        let (status, page) = pipeline.get(&path).await.unwrap();
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{page}");
        paged.extend(events.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/images/{id}/events?limit=1&cursor={cursor}"),
            None => break,
        }
        assert!(paged.len() <= whole.len(), "more pages than events");
    }
    assert_eq!(paged, whole);

    for bad in ["limit=0", "limit=501", "cursor=bm90LWEtY3Vyc29y"] {
        let (status, body) = pipeline
            .get(&format!("/v1/images/{id}/events?{bad}"))
            .await
            .unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid-query")),
            "{bad}: {body}"
        );
    }
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_or_path_that_cannot_be_read_gets_the_json_envelope() {
    let pipeline = Pipeline::start().await.expect("pipeline starts");
    let id = uuid::Uuid::now_v7();
    for (path, code) in [
        ("/v1/images?limit=many".to_string(), "invalid-query"),
        (format!("/v1/images/{id}/events?limit=-"), "invalid-query"),
        // Percent-encoded bytes that are not UTF-8.
        ("/v1/images/%FF%FE".to_string(), "invalid-image-id"),
    ] {
        let response = pipeline
            .http
            .get(pipeline.url(&path))
            .bearer_auth(&pipeline.api_key)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        let text = response.text().await.unwrap();
        assert_eq!(
            (status, content_type.as_str()),
            (400, "application/json"),
            "{path}: {text}"
        );
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["code"], code, "{path}: {body}");
    }
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_address_is_limited_before_its_key_is_checked() {
    let pipeline = Pipeline::start_with(|settings| settings.requests_per_minute_per_ip = 3)
        .await
        .expect("pipeline starts");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, body) = pipeline
            .request(reqwest::Method::GET, "not-a-key", "/v1/stats")
            .await
            .unwrap();
        statuses.push((
            status,
            body["code"].as_str().unwrap_or_default().to_string(),
        ));
    }
    let codes: Vec<(u16, &str)> = statuses.iter().map(|(s, c)| (*s, c.as_str())).collect();
    assert_eq!(
        codes,
        [
            (401, "invalid-api-key"),
            (401, "invalid-api-key"),
            (401, "invalid-api-key"),
            (429, "rate-limited")
        ]
    );
    // The operators' endpoints are not counted.
    let health = pipeline
        .http
        .get(pipeline.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    pipeline.stop().await.unwrap();
}
