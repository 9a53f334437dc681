<?php
// Drives crmgate the way RetailCRM's PHP client 5.x (retailcrm/api-client-php
// ~5.0, Http/Client::makeRequest) and the modules that copy its request code
// (Bitrix intaro.retailcrm, WooCommerce) do: curl, apiKey in the query for
// GETs and among the POST fields for POSTs, the POST fields handed to curl
// as an *array* (so curl sends multipart/form-data), certificate checks off.
//
// Usage: php php_client.php BASE_URL API_KEY EXTERNAL_ID
// Prints one JSON line per call: {"call":..., "status":..., "body":...}.

if ($argc !== 4) {
    fwrite(STDERR, "usage: php_client.php BASE_URL API_KEY EXTERNAL_ID\n");
    exit(2);
}
[$_, $base, $apiKey, $ext] = $argv;
if (strpos($base, 'https://') === false && strpos($base, 'http://127.') === false) {
    // api-client-php: "API schema requires HTTPS protocol" (outside debug).
    fwrite(STDERR, "API schema requires HTTPS protocol\n");
    exit(2);
}

function call($name, $method, $path, array $parameters = [])
{
    global $base, $apiKey;
    $parameters = array_merge(['apiKey' => $apiKey], $parameters);
    $url = rtrim($base, '/') . '/api/v5' . $path;
    if ($method === 'GET') {
        $url .= '?' . http_build_query($parameters, '', '&');
    }
    $ch = curl_init();
    curl_setopt($ch, CURLOPT_URL, $url);
    curl_setopt($ch, CURLOPT_RETURNTRANSFER, 1);
    curl_setopt($ch, CURLOPT_FOLLOWLOCATION, 1);
    curl_setopt($ch, CURLOPT_FAILONERROR, false);
    curl_setopt($ch, CURLOPT_SSL_VERIFYPEER, false);
    curl_setopt($ch, CURLOPT_SSL_VERIFYHOST, false);
    curl_setopt($ch, CURLOPT_TIMEOUT, 30);
    curl_setopt($ch, CURLOPT_CONNECTTIMEOUT, 30);
    if ($method === 'POST') {
        curl_setopt($ch, CURLOPT_POST, true);
        curl_setopt($ch, CURLOPT_POSTFIELDS, $parameters);
    }
    $body = curl_exec($ch);
    $status = curl_getinfo($ch, CURLINFO_HTTP_CODE);
    $error = curl_error($ch);
    curl_close($ch);
    if ($body === false) {
        fwrite(STDERR, "$name: curl failed: $error\n");
        exit(1);
    }
    echo json_encode(['call' => $name, 'status' => $status, 'body' => json_decode($body, true)]), "\n";
    return json_decode($body, true);
}

$order = ['externalId' => $ext, 'firstName' => 'Ivan', 'items' => [['productName' => 'Tea; "green" & black', 'quantity' => 2]]];
call('orders/create', 'POST', '/orders/create', ['order' => json_encode($order)]);
call('orders/edit', 'POST', "/orders/$ext/edit", ['order' => json_encode(['externalId' => $ext, 'firstName' => 'Pyotr']), 'by' => 'externalId']);
call('orders/get', 'GET', "/orders/$ext", ['by' => 'externalId']);
$batch = [];
for ($i = 1; $i <= 3; $i++) {
    $batch[] = ['externalId' => "$ext-up-$i", 'firstName' => "Batch $i"];
}
call('orders/upload', 'POST', '/orders/upload', ['orders' => json_encode($batch)]);
call('customers/create', 'POST', '/customers/create', ['customer' => json_encode(['externalId' => "$ext-c", 'firstName' => 'Anna'])]);
$page = 1;
do {
    $answer = call('orders/list', 'GET', '/orders', ['limit' => 20, 'page' => $page]);
    $pages = $answer['pagination']['totalPageCount'] ?? 0;
    $page++;
} while ($page <= $pages);
call('telephony/call/event', 'POST', '/telephony/call/event', ['event' => json_encode(['phone' => '+79990000000', 'type' => 'in', 'codes' => ['101']])]);
